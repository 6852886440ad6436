"""pytest glue for the CPython conformance suite (see README.md)."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "uvpy_loop: CPython conformance test bound to uvpy")
    config.addinivalue_line(
        "markers", "stock_loop: CPython conformance test bound to the stock "
        "asyncio loop (the oracle)")
