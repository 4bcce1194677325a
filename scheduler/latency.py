"""Round-trip time estimates between users and nodes.

    rtt_ms = max(MIN_RTT_MS, ACCESS_RTT_MS[network]
                 + 2 * great_circle_km * ROUTE_STRETCH / FIBRE_KM_PER_MS
                 + measured bias of the node (from probes, when there are any))

The model is deliberately simple and monotone in distance, so a latency budget
turns into a maximum great-circle distance per network type, and that into a
minimum dot product of unit vectors on the sphere: a feasibility test that is
one dot product per location.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

# IUGG mean Earth radius (Moritz, "Geodetic Reference System 1980", J. Geodesy 2000).
EARTH_RADIUS_KM = 6371.0088

# Light in silica fibre travels at c / n with n ~= 1.468 (ITU-T G.652 fibre),
# i.e. ~204 km per millisecond; 200 is the figure network engineers use.
FIBRE_KM_PER_MS = 200.0

# Fibre paths are longer than the geodesic: measured median path stretch of
# terrestrial routes is ~1.5-2x (Singla et al., "The Internet at the Speed of
# Light", HotNets 2014; Bozkurt et al., "Why Is the Internet so Slow?!", PAM 2017).
ROUTE_STRETCH = 1.5
MIN_RTT_MS = 0.1
# Geodesic km per ms of RTT budget left after the access network: out and back, stretched.
KM_PER_SPARE_MS = FIBRE_KM_PER_MS / (2 * ROUTE_STRETCH)
# Two unit vectors of one place can have a dot product a few ulps below 1, so a node in
# the user's own city would miss a budget its access network uses exactly; allowing 1e-15
# admits at most ~0.3 m (~4e-6 ms) more than the budget.
DOT_ROUNDING = 1e-15

# Round trip added by the node's own access network, in ms.
ACCESS_RTT_MS: dict[str, float] = {
    # FTTH/metro Ethernet last mile: 1-3 ms (FCC Measuring Broadband America 2023:
    # fibre providers have the lowest idle latency, dominated by backbone distance).
    "fiber": 2.0,
    # 5G NR user plane: 4 ms one-way target for eMBB (ITU-R M.2410, IMT-2020), measured
    # 10-15 ms RTT on mid-band commercial networks (Narayanan et al., SIGCOMM 2021).
    "5g": 12.0,
    # LTE: 30-50 ms measured RTT to the first IP hop (Huang et al., MobiSys 2012; OpenSignal).
    "lte": 35.0,
    # 802.11 hop: median a few ms, heavy tail (Sui et al., MobiCom 2016 WiFi latency study).
    "wifi": 5.0,
}


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance in km between two points given in degrees."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def rtt_ms(distance_km: float, network: str, bias_ms: float = 0.0) -> float:
    """Estimated round trip over ``distance_km`` of geodesic to a node on ``network``."""
    return float(rtt_ms_array(distance_km, ACCESS_RTT_MS[network], bias_ms))


def estimate_rtt_ms(
    user_lat: float, user_lon: float, node_lat: float, node_lon: float, network: str
) -> float:
    """Estimated round trip from a user at (user_lat, user_lon) to a node."""
    return rtt_ms(great_circle_km(user_lat, user_lon, node_lat, node_lon), network)


def max_distance_km(budget_ms: float, network: str, bias_ms: float = 0.0) -> float:
    """Largest geodesic distance whose estimated RTT fits ``budget_ms``; negative if none."""
    spare_ms = budget_ms - ACCESS_RTT_MS[network] - bias_ms
    return spare_ms * KM_PER_SPARE_MS


def min_dot_for_distance(distance_km: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Smallest dot product of unit vectors that are at most ``distance_km`` apart, less
    ``DOT_ROUNDING``.

    Negative distances (budget already spent by the access network) give 2.0,
    above any possible dot product, so nothing passes.
    """
    d = np.asarray(distance_km, dtype=np.float64)
    angle = np.clip(d / EARTH_RADIUS_KM, 0.0, math.pi)
    return np.where(d < 0, 2.0, np.cos(angle) - DOT_ROUNDING)


def unit_vectors(lat_deg: npt.ArrayLike, lon_deg: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """(n, 3) unit vectors on the sphere for arrays of latitudes and longitudes."""
    lat = np.radians(np.asarray(lat_deg, dtype=np.float64))
    lon = np.radians(np.asarray(lon_deg, dtype=np.float64))
    cos_lat = np.cos(lat)
    return np.stack([cos_lat * np.cos(lon), cos_lat * np.sin(lon), np.sin(lat)], axis=-1)


def distance_km_from_dot(dot: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Geodesic distance in km for dot products of unit vectors."""
    return np.arccos(np.clip(np.asarray(dot, dtype=np.float64), -1.0, 1.0)) * EARTH_RADIUS_KM


def rtt_ms_array(
    distance_km: npt.ArrayLike, access_rtt_ms: npt.ArrayLike, bias_ms: npt.ArrayLike = 0.0
) -> npt.NDArray[np.float64]:
    """``rtt_ms`` over arrays: access RTTs and biases given per node, floored at
    ``MIN_RTT_MS`` (a measured bias below the model cannot make a round trip free)."""
    d = np.asarray(distance_km, dtype=np.float64)
    rtt = np.asarray(access_rtt_ms) + 2 * d * ROUTE_STRETCH / FIBRE_KM_PER_MS + np.asarray(bias_ms)
    return np.maximum(rtt, MIN_RTT_MS)
