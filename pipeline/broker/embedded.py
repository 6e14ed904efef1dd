"""Embedded Kafka broker: librdkafka's mock cluster, reached through ctypes.

The confluent-kafka wheel ships librdkafka, whose mock cluster is a real TCP
server speaking the Kafka protocol on 127.0.0.1. It has no CreateTopics, so
topics are created here with their partition counts before anyone uses them.
It keeps at most 5 MiB or 100,000 message sets per partition and drops the
oldest beyond that: producers must apply backpressure on consumer lag.
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading
from dataclasses import dataclass

import confluent_kafka

# rd_kafka_type_t
_RD_KAFKA_PRODUCER = 0

# Kafka API keys used for failure injection (see the Kafka protocol guide).
API_KEYS = {
    "Produce": 0,
    "Fetch": 1,
    "ListOffsets": 2,
    "Metadata": 3,
    "OffsetCommit": 8,
    "OffsetFetch": 9,
    "FindCoordinator": 10,
    "JoinGroup": 11,
    "Heartbeat": 12,
    "SyncGroup": 14,
    "InitProducerId": 22,
}


# The mock cluster holds a waiting fetch for the client's whole fetch wait even when data arrives
# (Apache Kafka answers at once), so consumers of the embedded broker wait briefly: with the
# clients' defaults (aiokafka under Faust 1.5 s, librdkafka 500 ms) every caught-up consumer saw
# new batches that late, and producers waiting on consumers' commits slowed to match.
FETCH_WAIT_MS = 20


class BrokerError(RuntimeError):
    """The embedded broker could not be started or changed."""


def _library_path() -> str:
    base = os.path.dirname(confluent_kafka.__file__)
    candidates = glob.glob(os.path.join(base, os.pardir, "confluent_kafka.libs", "librdkafka*.so*"))
    candidates += glob.glob(os.path.join(base, ".dylibs", "librdkafka*.dylib"))
    if not candidates:
        raise BrokerError("librdkafka not found beside confluent_kafka; reinstall the confluent-kafka wheel")
    return os.path.realpath(candidates[0])


def _load() -> ctypes.CDLL:
    lib = ctypes.CDLL(_library_path())
    vp, cp, i32 = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32
    signatures = {
        "rd_kafka_conf_new": ([], vp),
        "rd_kafka_conf_set": ([vp, cp, cp, cp, ctypes.c_size_t], ctypes.c_int),
        "rd_kafka_new": ([ctypes.c_int, vp, cp, ctypes.c_size_t], vp),
        "rd_kafka_destroy": ([vp], None),
        "rd_kafka_mock_cluster_new": ([vp, ctypes.c_int], vp),
        "rd_kafka_mock_cluster_destroy": ([vp], None),
        "rd_kafka_mock_cluster_bootstraps": ([vp], cp),
        "rd_kafka_mock_topic_create": ([vp, cp, ctypes.c_int, ctypes.c_int], ctypes.c_int),
        "rd_kafka_mock_set_controller_id": ([vp, i32], ctypes.c_int),
        "rd_kafka_mock_group_initial_rebalance_delay_ms": ([vp, i32], None),
        "rd_kafka_mock_broker_set_down": ([vp, i32], ctypes.c_int),
        "rd_kafka_mock_broker_set_up": ([vp, i32], ctypes.c_int),
        "rd_kafka_mock_broker_set_rtt": ([vp, i32, ctypes.c_int], ctypes.c_int),
        "rd_kafka_mock_push_request_errors_array": (
            [vp, ctypes.c_int16, ctypes.c_size_t, ctypes.POINTER(ctypes.c_int)],
            None,
        ),
        "rd_kafka_mock_clear_request_errors": ([vp, ctypes.c_int16], None),
        "rd_kafka_err2str": ([ctypes.c_int], cp),
    }
    for name, (args, result) in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = result
    return lib


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication: int = 1


class EmbeddedBroker:
    """A Kafka-protocol broker living in this process.

    Use as a context manager or call :meth:`start` / :meth:`stop`.
    """

    def __init__(self, brokers: int = 1) -> None:
        self._brokers = brokers
        self._lib: ctypes.CDLL | None = None
        self._rk: int | None = None
        self._cluster: int | None = None
        self._lock = threading.Lock()
        self.bootstrap_servers: str = ""
        self.topics: dict[str, int] = {}

    def start(self) -> EmbeddedBroker:
        with self._lock:
            if self._cluster is not None:
                return self
            lib = _load()
            conf = lib.rd_kafka_conf_new()
            errstr = ctypes.create_string_buffer(512)
            # The handle only hosts the mock cluster; it never connects anywhere.
            for key, value in (("log_level", "3"),):
                lib.rd_kafka_conf_set(conf, key.encode(), value.encode(), errstr, 512)
            rk = lib.rd_kafka_new(_RD_KAFKA_PRODUCER, conf, errstr, 512)
            if not rk:
                raise BrokerError(f"cannot create librdkafka handle: {errstr.value.decode()}")
            cluster = lib.rd_kafka_mock_cluster_new(rk, self._brokers)
            if not cluster:
                lib.rd_kafka_destroy(rk)
                raise BrokerError("cannot start the embedded broker (rd_kafka_mock_cluster_new failed)")
            self._lib, self._rk, self._cluster = lib, rk, cluster
            self.bootstrap_servers = lib.rd_kafka_mock_cluster_bootstraps(cluster).decode()
            # Clients that ask for the controller (topic declaration) fail without one.
            lib.rd_kafka_mock_set_controller_id(cluster, 1)
            # Like Kafka's group.initial.rebalance.delay.ms, the mock waits 3 s before a new group's first
            # rebalance; with one member per group here that only delays every start and restart.
            lib.rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 0)
        return self

    def stop(self) -> None:
        with self._lock:
            if self._cluster is None:
                return
            assert self._lib is not None
            self._lib.rd_kafka_mock_cluster_destroy(self._cluster)
            self._lib.rd_kafka_destroy(self._rk)
            self._cluster = self._rk = None
            self.bootstrap_servers = ""

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._cluster is not None

    def _check(self, err: int, what: str) -> None:
        if err:
            assert self._lib is not None
            raise BrokerError(f"{what}: {self._lib.rd_kafka_err2str(err).decode()}")

    def _require(self) -> tuple[ctypes.CDLL, int]:
        if self._cluster is None or self._lib is None:
            raise BrokerError("embedded broker is not running")
        return self._lib, self._cluster

    def create_topic(self, name: str, partitions: int, replication: int = 1) -> None:
        """Create a topic with a fixed partition count (the mock has no CreateTopics API)."""
        lib, cluster = self._require()
        if self.topics.get(name) == partitions:
            return
        replication = min(replication, self._brokers)
        self._check(lib.rd_kafka_mock_topic_create(cluster, name.encode(), partitions, replication),
                    f"create topic {name}")
        self.topics[name] = partitions

    def create_topics(self, specs: list[TopicSpec]) -> None:
        for spec in specs:
            self.create_topic(spec.name, spec.partitions, spec.replication)

    # -- failure injection, for fault tests ---------------------------------

    def set_broker_down(self, broker_id: int = 1) -> None:
        """Close the broker's connections and refuse new ones until :meth:`set_broker_up`."""
        lib, cluster = self._require()
        self._check(lib.rd_kafka_mock_broker_set_down(cluster, broker_id), "broker down")

    def set_broker_up(self, broker_id: int = 1) -> None:
        lib, cluster = self._require()
        self._check(lib.rd_kafka_mock_broker_set_up(cluster, broker_id), "broker up")

    def set_rtt(self, rtt_ms: int, broker_id: int = 1) -> None:
        """Delay every response of a broker by ``rtt_ms``."""
        lib, cluster = self._require()
        self._check(lib.rd_kafka_mock_broker_set_rtt(cluster, broker_id, rtt_ms), "broker rtt")

    def push_request_errors(self, api: str, errors: list[int]) -> None:
        """Make the next ``len(errors)`` requests of ``api`` fail with these Kafka error codes."""
        lib, cluster = self._require()
        arr = (ctypes.c_int * len(errors))(*errors)
        lib.rd_kafka_mock_push_request_errors_array(cluster, API_KEYS[api], len(errors), arr)

    def clear_request_errors(self, api: str) -> None:
        lib, cluster = self._require()
        lib.rd_kafka_mock_clear_request_errors(cluster, API_KEYS[api])
