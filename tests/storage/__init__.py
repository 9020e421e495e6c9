"""Tests of oseg3d.storage."""
