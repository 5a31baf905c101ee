"""Optimization passes: the train IR (+ its trained weights) -> the fastest equivalent inference IR.

One pass per module, each ``pass_name(G, weights) -> PassResult``; `pipeline.py` lists them in order
(DEPLOY_PIPELINE) and runs them with the IR verifier after each. codegen/deploy.py applies them to a trained module.
"""
from archdsl.passes.pipeline import DEPLOY_PIPELINE, PASSES, describe, run_pipeline
from archdsl.passes.result import PassResult
from archdsl.passes.weights import flatten_state, split_state

__all__ = ["DEPLOY_PIPELINE", "PASSES", "PassResult", "describe", "flatten_state", "run_pipeline", "split_state"]
