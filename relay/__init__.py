"""Pigeon relay package."""
