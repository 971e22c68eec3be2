"""Samplers: plain functions with one shared signature (see ``diffexp.samplers.base``)."""
