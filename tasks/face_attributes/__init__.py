"""Face attributes by distillation (CelebA, attribute CSVs, unlabeled face folders, synthetic faces): §4.5."""

from tasks.face_attributes.data import AttributeCSV, CelebA, FaceAttributesDataModule, UnlabeledImages
from tasks.face_attributes.synthetic import ATTRIBUTES, SyntheticAttributeFaces, SyntheticUnlabeledFaces

__all__ = [
    "ATTRIBUTES",
    "AttributeCSV",
    "CelebA",
    "FaceAttributesDataModule",
    "SyntheticAttributeFaces",
    "SyntheticUnlabeledFaces",
    "UnlabeledImages",
]
