"""Evaluating trained policies: sampling responses, pairwise judging with intervals, rule agreement,
reward-hacking curves, and the hand-offs to AlpacaEval and MT-Bench.

Pure logic lives here, tested on literal inputs; the stages ``generate``, ``evaluate`` and
``report`` (``autorule.stages``) read and write the artifacts around it.
"""
