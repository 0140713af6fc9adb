"""Saga orchestration: multi-step operations across services, each step with a compensation."""
