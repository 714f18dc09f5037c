"""Pigeon client_sdk package."""
