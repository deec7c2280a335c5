"""Photo geolocation (PlaNet over adaptive S2 cells): §4.4 of the paper.

Light on purpose: the partition and the metrics import no Lightning, for tools that do not train.
"""

from tasks.geolocation.cells import Partition, partition, partitions, read_cells_csv, write_cells_csv
from tasks.geolocation.metrics import SCALES_KM, geo_metrics, great_circle_km

__all__ = [
    "Partition",
    "SCALES_KM",
    "geo_metrics",
    "great_circle_km",
    "partition",
    "partitions",
    "read_cells_csv",
    "write_cells_csv",
]
