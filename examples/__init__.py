"""Examples: a user's own optimizer, checked and benchmarked without editing the package."""
