"""Developer tooling, shipped beside the runtime but never imported by it.

The Claude simulator (sim), the benchmarks (bench), the chaos run, the demo,
the test harness, the local brokers (devbroker: Tansu; kafkabroker: Apache Kafka
from Maven Central; engines picks one), the schema registry (apicurio), Maven
(maven) and child-process helpers (procs). Imports the runtime freely; the
runtime (`pipeline` outside `dev` and `cli`) imports nothing from here, and
tests/unit/test_layout.py fails if it does. The CLI imports it lazily, inside
the commands that need it.
"""
