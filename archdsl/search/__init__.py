"""Search: an Optuna study over an .arch space (trial_choices.py -> data.py -> train.py / latency.py -> study.py -> report.py)."""
