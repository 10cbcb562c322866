"""Example topologies, shipped as package data (testbed.topologies)."""
