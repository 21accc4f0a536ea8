"""Infrastructure every stage uses: crash-safe files, the content-keyed cache, package data, and
the executors that run lists of jobs (in this process, a process pool or a Ray cluster)."""
