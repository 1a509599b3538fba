"""entrospec simulator: replay recorded speculative-decoding traces through latency models.

Layout (one concept a module):
  trace      the Parquet trace schema, reader and writer
  synth      synthetic traces with closed-form answers
  latency    latency models: const, roofline, measured profile
  policies/  drafting / acceptance / routing policies, registered by name
  engines/   reference replay (the spec), fast vectorized engine, simpy event engine
  metrics    one function that turns a round log into the reported metrics
  sweep      grid sweeps over all cores
  cli        the `sim` command
"""

__version__ = "0.1.0"
