"""The development kit: the tiny random model and its weight rule, stand-in stages, and the demo.

Tests, benchmarks and `launch.py --demo` use it; the runtime (launcher, queue, workers, stages, engine) never
imports it.
"""
