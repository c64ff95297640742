"""Proxy fidelity against trained reference models (`demix validate`): metrics, runs, report."""
