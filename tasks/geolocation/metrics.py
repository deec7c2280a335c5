"""What geolocation is scored on: great-circle error, the share within five scales, GeoScore, countries.

Conventions (peers differ, REFERENCE §7): haversine on a sphere of radius 6371 km (PlaNet's, OSV-5M's);
a photo counts at scale r when its error d < r (strictly, as OSV-5M and PLONK); GeoScore is the mean of
5000·exp(-d/1492.7) (OSV-5M, PIGEON). The scales are Im2GPS's, named as PlaNet names them. The tests
check the distance against geopy's great_circle at the same radius, and its geodesic (WGS-84) to 0.5 %.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch

EARTH_RADIUS_KM = 6371.0
SCALES_KM = {"street": 1, "city": 25, "region": 200, "country": 750, "continent": 2500}
GEOSCORE_SCALE_KM = 1492.7
METRIC_KEYS = (*(f"acc_{r}km" for r in SCALES_KM.values()), "median_km", "mean_km", "geoscore", "count")


def great_circle_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Haversine distance in km between points in degrees (numpy arrays or scalars, broadcast)."""
    lat1, lon1, lat2, lon2 = (np.radians(np.asarray(v, np.float64)) for v in (lat1, lon1, lat2, lon2))
    h = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def great_circle_km_torch(lat1, lon1, lat2, lon2) -> torch.Tensor:
    """The same haversine on tensors (degrees), for losses and batched evaluation."""
    lat1, lon1, lat2, lon2 = (torch.deg2rad(v) for v in (lat1, lon1, lat2, lon2))
    h = (
        torch.sin((lat2 - lat1) / 2) ** 2
        + torch.cos(lat1) * torch.cos(lat2) * torch.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * torch.asin(torch.sqrt(h.clamp(0.0, 1.0)))


def geo_metrics(distances_km: Sequence[float] | np.ndarray) -> dict[str, float]:
    """acc_{1,25,200,750,2500}km (fractions, d < r), median_km, mean_km, geoscore and count."""
    d = np.asarray(distances_km, np.float64)
    if d.size == 0:
        raise ValueError("no distances to score")
    if not np.all(np.isfinite(d)):
        raise ValueError("distances must be finite")
    result = {f"acc_{r}km": float(np.mean(d < r)) for r in SCALES_KM.values()}
    result["median_km"] = float(np.median(d))
    result["mean_km"] = float(np.mean(d))
    result["geoscore"] = float(np.mean(5000.0 * np.exp(-d / GEOSCORE_SCALE_KM)))
    result["count"] = int(d.size)
    return result


def countries_of(lat: Sequence[float], lon: Sequence[float]) -> list[str]:
    """ISO country code of the nearest GeoNames city (`reverse_geocoder`, offline, as OSV-5M scores)."""
    if len(lat) == 0:
        return []
    import reverse_geocoder

    geocoder = reverse_geocoder.RGeocoder(mode=1, verbose=False)
    return [place["cc"] for place in geocoder.query(list(zip(map(float, lat), map(float, lon), strict=True)))]


def country_report(
    true_countries: Sequence[str], predicted_countries: Sequence[str], distances_km: Sequence[float]
) -> tuple[float, list[dict]]:
    """Country accuracy (predicted country == true country, photos with a known country), and per true
    country: photo count, that accuracy, the five-scale shares and the median error."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, country in enumerate(true_countries):
        if country:
            groups[country].append(i)
    if not groups:
        return float("nan"), []
    d = np.asarray(distances_km, np.float64)
    hits = np.array([t == p for t, p in zip(true_countries, predicted_countries, strict=True)])
    known = np.array([bool(t) for t in true_countries])
    rows = []
    for country, members in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        scores = geo_metrics(d[members])
        rows.append(
            {
                "country": country,
                "count": len(members),
                "country_acc": float(hits[members].mean()),
                **{k: scores[k] for k in METRIC_KEYS[:5]},
                "median_km": scores["median_km"],
            }
        )
    return float(hits[known].mean()), rows
