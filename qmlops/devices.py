"""Device registry: where a classifier's circuits run, and the noise they meet there.

Device names:

* ``ideal`` (the default): the exact path of :mod:`qmlops.simulation`, unchanged.
* ``fake_<name>`` (``fake_manila``, ``fake_perth``, ...): a snapshot of an IBM Quantum device
  from :mod:`qiskit_ibm_runtime.fake_provider`: its coupling map, basis gates and noise model
  (gate errors, readout errors, relaxation). The names are the fake backends' own
  ``backend_name``; where a V1 and a V2 class share one, the V2 class is used.
* ``noise:depolarizing``: all-to-all connectivity with depolarizing errors on one- and
  two-qubit gates and a symmetric readout error, set by :class:`NoiseParameters`.
* ``ibm:<backend>`` (``ibm:ibm_torino``): IBM Quantum hardware through qiskit-ibm-runtime; the
  token comes from ``$QISKIT_IBM_TOKEN`` (see :func:`ibm_credentials`).

:func:`list_devices` reads each fake backend's configuration file without importing
qiskit-ibm-runtime or building a noise model, so it answers in well under a second. Backends and
their Aer simulators are built on first use and cached for the process (building the noise
model of a large device takes seconds).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from qmlops.circuits import MAX_QUBITS
from qmlops.errors import ConfigurationError

__all__ = [
    "DEFAULT_BASIS_GATES",
    "Device",
    "DeviceError",
    "DeviceInfo",
    "DeviceTooSmallError",
    "MissingCredentialsError",
    "NoiseParameterError",
    "NoiseParameters",
    "ShotsRequiredError",
    "UnknownDeviceError",
    "check_device_fits",
    "device_backend",
    "device_simulator",
    "fake_backend_class",
    "ibm_credentials",
    "list_devices",
    "resolve_device",
]

DeviceSource = Literal["ideal", "fake", "noise", "ibm"]
IDEAL = "ideal"
DEPOLARIZING = "noise:depolarizing"
IBM_PREFIX = "ibm:"
FAKE_PREFIX = "fake_"
DEFAULT_BASIS_GATES: tuple[str, ...] = ("cx", "id", "rz", "sx", "x")
"""Basis of the ``noise:depolarizing`` device (that of most IBM Falcon devices)."""
TOKEN_ENV = "QISKIT_IBM_TOKEN"
INSTANCE_ENV = "QISKIT_IBM_INSTANCE"
CHANNEL_ENV = "QISKIT_IBM_CHANNEL"
_IBM_BACKEND = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class DeviceError(ConfigurationError):
    """A device setting is invalid (never retried)."""


class UnknownDeviceError(DeviceError):
    """The device name is not in the registry."""


class DeviceTooSmallError(DeviceError):
    """The circuit needs more qubits than the device has."""


class ShotsRequiredError(DeviceError):
    """The device samples measurements, so it needs a number of shots."""


class NoiseParameterError(DeviceError):
    """An error rate of the ``noise:depolarizing`` device is malformed or out of range."""


class MissingCredentialsError(DeviceError):
    """An ``ibm:`` device was requested without IBM Quantum credentials in the environment."""


@dataclass(frozen=True)
class NoiseParameters:
    """Error rates of the ``noise:depolarizing`` device.

    Attributes:
        one_qubit_error: Depolarizing probability of each one-qubit gate (``sx``, ``x``).
        two_qubit_error: Depolarizing probability of each two-qubit gate (``cx``).
        readout_error: Probability that a measured bit is flipped.
    """

    one_qubit_error: float = 0.001
    two_qubit_error: float = 0.01
    readout_error: float = 0.02

    def __post_init__(self) -> None:
        # Depolarizing channels are completely positive up to 4^n/(4^n - 1); a readout flip
        # above one half would invert the bit.
        limits = {"one_qubit_error": 0.75, "two_qubit_error": 0.9375, "readout_error": 0.5}
        for name, high in limits.items():
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or not 0.0 <= value <= high
            ):
                raise NoiseParameterError(f"{name} must be a number in [0, {high}], got {value!r}")


@dataclass(frozen=True)
class DeviceInfo:
    """One row of :func:`list_devices`.

    Attributes:
        name: Device name as passed to ``--device``.
        n_qubits: Qubits of the device (``None``: as many as the circuit needs).
        basis_gates: Native gates circuits are transpiled to (empty: no transpilation).
        source: ``"ideal"``, ``"fake"``, ``"noise"`` or ``"ibm"``.
    """

    name: str
    n_qubits: int | None
    basis_gates: tuple[str, ...]
    source: DeviceSource


@dataclass(frozen=True)
class Device:
    """A resolved device: what :func:`resolve_device` returns and the executors consume.

    Attributes:
        name: Registry name (``ideal``, ``fake_manila``, ``noise:depolarizing``, ``ibm:...``).
        source: ``"ideal"``, ``"fake"``, ``"noise"`` or ``"ibm"``.
        n_qubits: Qubits of the device (``None``: unknown before connecting, or unlimited).
        basis_gates: Native gates.
        noise: Error rates of the ``noise:depolarizing`` device, else ``None``.
        default_rep_delay_s: Delay between shots on the device, from its configuration
            (``None``: not given).
    """

    name: str
    source: DeviceSource
    n_qubits: int | None = None
    basis_gates: tuple[str, ...] = ()
    noise: NoiseParameters | None = None
    default_rep_delay_s: float | None = field(default=None, compare=False)

    @property
    def needs_shots(self) -> bool:
        """Whether circuits on this device are sampled (every device but ``ideal``)."""
        return self.source != "ideal"

    @property
    def is_hardware(self) -> bool:
        """Whether this device is a real QPU (costs QPU time)."""
        return self.source == "ibm"

    @property
    def backend_name(self) -> str:
        """The name of the backend (``ibm_torino`` for ``ibm:ibm_torino``)."""
        return self.name.removeprefix(IBM_PREFIX)


# -- registry -------------------------------------------------------------------------------


def _fake_backends_dir() -> Path | None:
    # find_spec locates the package without importing it (importing takes several seconds).
    spec = importlib.util.find_spec("qiskit_ibm_runtime")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "fake_provider" / "backends"


@functools.lru_cache(maxsize=1)
def _fake_configurations() -> dict[str, dict[str, Any]]:
    """Fake backend name -> the fields of its configuration file that the registry needs."""
    root = _fake_backends_dir()
    found: dict[str, dict[str, Any]] = {}
    if root is None:
        return found
    for conf in sorted(root.glob("*/conf_*.json")):
        data = json.loads(conf.read_text())
        name = FAKE_PREFIX + conf.stem.removeprefix("conf_")
        rep_delay_us = data.get("default_rep_delay")
        found[name] = {
            "n_qubits": int(data["n_qubits"]),
            "basis_gates": tuple(data.get("basis_gates", ())),
            "default_rep_delay_s": None if rep_delay_us is None else float(rep_delay_us) * 1e-6,
        }
    return found


def list_devices() -> list[DeviceInfo]:
    """Every device the registry knows, fast (no backend or noise model is built).

    Returns:
        ``ideal``, ``noise:depolarizing``, every fake backend by name, and the ``ibm:<backend>``
        pattern (its qubits and gates are known only once connected).
    """
    rows = [
        DeviceInfo(IDEAL, None, (), "ideal"),
        DeviceInfo(DEPOLARIZING, None, DEFAULT_BASIS_GATES, "noise"),
    ]
    rows += [
        DeviceInfo(name, conf["n_qubits"], conf["basis_gates"], "fake")
        for name, conf in _fake_configurations().items()
    ]
    rows.append(DeviceInfo(IBM_PREFIX + "<backend>", None, (), "ibm"))
    return rows


def _known_names() -> str:
    return ", ".join([IDEAL, DEPOLARIZING, "ibm:<backend>", *_fake_configurations()])


def resolve_device(
    name: str,
    noise: NoiseParameters | None = None,
    environ: Mapping[str, str] | None = None,
) -> Device:
    """Look a device up by name, checking its settings before anything is built or sent.

    Args:
        name: A name from :func:`list_devices` (or ``ibm:<backend>``).
        noise: Error rates for ``noise:depolarizing`` (default: :class:`NoiseParameters`).
        environ: Environment holding IBM credentials (default: ``os.environ``).

    Returns:
        The resolved :class:`Device`.

    Raises:
        UnknownDeviceError: If the name is unknown (the message lists the known names).
        MissingCredentialsError: For ``ibm:`` without ``$QISKIT_IBM_TOKEN``.
    """
    if not isinstance(name, str):
        raise UnknownDeviceError(f"device must be a name, got {name!r}")
    if name == IDEAL:
        return Device(IDEAL, "ideal")
    if name == DEPOLARIZING:
        return Device(
            DEPOLARIZING, "noise", basis_gates=DEFAULT_BASIS_GATES, noise=noise or NoiseParameters()
        )
    if name.startswith(IBM_PREFIX):
        backend = name.removeprefix(IBM_PREFIX)
        if not _IBM_BACKEND.match(backend):
            raise UnknownDeviceError(
                f"unknown device {name!r}: an IBM backend name is lower-case letters, digits and "
                "underscores, such as ibm:ibm_torino"
            )
        ibm_credentials(os.environ if environ is None else environ)
        return Device(name, "ibm")
    conf = _fake_configurations().get(name)
    if conf is None:
        raise UnknownDeviceError(f"unknown device {name!r}; known devices: {_known_names()}")
    return Device(
        name,
        "fake",
        n_qubits=conf["n_qubits"],
        basis_gates=conf["basis_gates"],
        default_rep_delay_s=conf["default_rep_delay_s"],
    )


def check_device_fits(device: Device, n_qubits: int, shots: int | None) -> None:
    """Refuse a circuit the device cannot run, before anything is built or simulated.

    Raises:
        DeviceTooSmallError: If the circuit has more qubits than the device.
        ShotsRequiredError: If the device samples and ``shots`` is ``None``.
    """
    limit = device.n_qubits if device.n_qubits is not None else MAX_QUBITS
    if n_qubits > limit:
        raise DeviceTooSmallError(
            f"the circuit needs {n_qubits} qubits but {device.name} has {limit}; "
            "reduce the qubits or choose a larger device"
        )
    if device.needs_shots and shots is None:
        raise ShotsRequiredError(
            f"{device.name} samples measurements: give a number of shots (for example 1024)"
        )


def ibm_credentials(environ: Mapping[str, str]) -> dict[str, str]:
    """IBM Quantum account settings from the environment, for ``QiskitRuntimeService(**...)``.

    The token is only ever passed on to the service: never logged, printed or recorded.

    Args:
        environ: Environment with ``$QISKIT_IBM_TOKEN`` and optionally ``$QISKIT_IBM_INSTANCE``
            and ``$QISKIT_IBM_CHANNEL`` (default ``ibm_quantum_platform``).

    Raises:
        MissingCredentialsError: If the token is missing or empty.
    """
    token = environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise MissingCredentialsError(
            f"IBM Quantum devices need an API token in ${TOKEN_ENV} "
            f"(and usually ${INSTANCE_ENV}, the instance's CRN)"
        )
    credentials = {"token": token, "channel": environ.get(CHANNEL_ENV) or "ibm_quantum_platform"}
    if environ.get(INSTANCE_ENV):
        credentials["instance"] = environ[INSTANCE_ENV]
    return credentials


# -- backends and simulators (built on first use, cached) -----------------------------------


@functools.lru_cache(maxsize=1)
def _fake_classes() -> dict[str, type]:
    from qiskit_ibm_runtime import fake_provider
    from qiskit_ibm_runtime.fake_provider.fake_backend import FakeBackendV2

    classes: dict[str, type] = {}
    # Sorted so that a V2 class (name ending in V2) comes last and wins over a V1 namesake.
    for attribute in sorted(dir(fake_provider), key=lambda n: (n.endswith("V2"), n)):
        candidate = getattr(fake_provider, attribute)
        if isinstance(candidate, type) and issubclass(candidate, FakeBackendV2):
            name = getattr(candidate, "backend_name", None)
            if name:
                classes[name] = candidate
    return classes


def fake_backend_class(name: str) -> type:
    """The fake backend class behind a registry name (``fake_manila`` -> ``FakeManilaV2``).

    Raises:
        UnknownDeviceError: If no fake backend has that name.
    """
    try:
        return _fake_classes()[name]
    except KeyError:
        raise UnknownDeviceError(
            f"unknown device {name!r}; known devices: {_known_names()}"
        ) from None


@functools.lru_cache(maxsize=16)
def device_backend(device: Device) -> Any:
    """The Qiskit backend of a simulated device: its target drives the transpilation.

    ``noise:depolarizing`` gets an all-to-all target on :data:`DEFAULT_BASIS_GATES`
    (:data:`qmlops.circuits.MAX_QUBITS` qubits); IBM hardware is opened by
    :mod:`qmlops.ibm_runtime` instead.

    Raises:
        DeviceError: For ``ideal`` or ``ibm:`` devices.
    """
    if device.source == "fake":
        return fake_backend_class(device.name)()
    if device.source == "noise":
        from qiskit.providers.fake_provider import GenericBackendV2
        from qiskit.transpiler import CouplingMap

        return GenericBackendV2(
            MAX_QUBITS,
            basis_gates=[g for g in DEFAULT_BASIS_GATES if g != "id"],
            coupling_map=CouplingMap.from_full(MAX_QUBITS),
            noise_info=False,
            seed=0,
        )
    raise DeviceError(f"{device.name} has no simulated backend")


def depolarizing_noise_model(noise: NoiseParameters) -> Any:
    """An Aer noise model with the given depolarizing and readout error rates."""
    from qiskit_aer.noise import NoiseModel, ReadoutError, depolarizing_error

    model = NoiseModel(basis_gates=list(DEFAULT_BASIS_GATES))
    if noise.one_qubit_error > 0:
        model.add_all_qubit_quantum_error(
            depolarizing_error(noise.one_qubit_error, 1), ["sx", "x", "id"]
        )
    if noise.two_qubit_error > 0:
        model.add_all_qubit_quantum_error(depolarizing_error(noise.two_qubit_error, 2), ["cx"])
    if noise.readout_error > 0:
        flip = noise.readout_error
        model.add_all_qubit_readout_error(ReadoutError([[1 - flip, flip], [flip, 1 - flip]]))
    return model


@functools.lru_cache(maxsize=16)
def device_simulator(device: Device) -> Any:
    """The Aer simulator of a device's noise, built once per device per process.

    Raises:
        DeviceError: For ``ideal`` or ``ibm:`` devices.
    """
    from qiskit_aer import AerSimulator

    if device.source == "fake":
        return AerSimulator.from_backend(device_backend(device))
    if device.source == "noise":
        assert device.noise is not None
        return AerSimulator(noise_model=depolarizing_noise_model(device.noise))
    raise DeviceError(f"{device.name} has no simulator")
