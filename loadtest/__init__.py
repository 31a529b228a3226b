"""Locust load tests of the served programs under deadline SLOs (see locustfile.py)."""
