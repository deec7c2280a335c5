"""Fine-grained classification (Stanford Dogs, any ImageFolder set, the synthetic set): §4.3 of the paper."""

from tasks.finegrained.data import FineGrainedDataModule, StanfordDogs
from tasks.finegrained.synthetic import SyntheticFineGrained

__all__ = ["FineGrainedDataModule", "StanfordDogs", "SyntheticFineGrained"]
