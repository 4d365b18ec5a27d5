"""The benchmark harness: `python -m bench` (`make bench`) and the soak test `python -m bench.soak`."""
