"""Infrastructure every stage uses: crash-safe files, the content-keyed cache, package data."""
