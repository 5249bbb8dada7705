"""Test helpers shipped with eqscale so that users can test their own models the same way."""
