"""Pigeon protocol package."""
