"""Sending work to Lambda: one batch's round trip, the invoker (spill, retries by the
attempt policy, error mapping) and its transports (lean SigV4 or boto3).
"""
