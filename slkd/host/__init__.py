"""Glue to the mdistiller host. Everything here may import mdistiller, lazily."""
