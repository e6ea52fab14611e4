"""Benchmarks (DESIGN.md "Performance targets"): scripts run by hand, never timed tests."""
