"""Test helpers: real processes (redis-server, the api) and throwaway tasks for subprocesses."""
