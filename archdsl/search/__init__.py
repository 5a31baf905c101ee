"""Search: an Optuna study over an .arch space (space.py -> data.py -> train.py / latency.py -> study.py -> report.py)."""
