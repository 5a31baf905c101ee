"""Optimization passes: the train IR (+ its trained weights) -> the fastest equivalent inference IR.

One pass per module, each ``pass_name(G, weights) -> PassResult``; `pipeline.py` lists them in order
(DEPLOY_PIPELINE) and runs them with the IR verifier after each. `deploy.py` applies them to a compiled module.
"""
from archdsl.passes.base import PassResult, flatten_state, split_state
from archdsl.passes.deploy import deploy_module
from archdsl.passes.pipeline import DEPLOY_PIPELINE, PASSES, describe, run_pipeline

__all__ = ["DEPLOY_PIPELINE", "PASSES", "PassResult", "deploy_module", "describe", "flatten_state", "run_pipeline",
           "split_state"]
