"""Tests of the client SDK (store, history, profiles)."""
