"""Examinations of a running camera server, each a module with `run(args) -> dict`.

bench/bench_reliability.py imports every module here that exists and merges what they return:
their figures, and a `targets` list of {"name","value","op","bound","unit"}. The request strategies
(oip_requests.py) are shared with tests/server/test_reliability.py.
"""
