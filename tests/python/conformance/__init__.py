"""CPython asyncio conformance suite.

CPython's own ``test.test_asyncio`` classes are re-bound here against each
event loop in :data:`._binding.LOOPS` ("asyncio" = stock loop, the oracle;
"uvpy" = ours).  See README.md in this directory.
"""
