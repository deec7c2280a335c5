"""The shared face renderer is part of every synthetic face set's definition: pin its pixels."""

import hashlib

from tasks.face_embedding.synthetic import SyntheticFaces

# sha256 of 5 unseen people x 3 photos at 64 and 80 px, seed 3, as rendered when the renderer moved
# to tasks/common/faces.py (unchanged from tasks/face_embedding/synthetic.py before the move).
FACE_EMBEDDING_PIXELS = "ef57d74e4fa145029e0caf7b1fdc0c94a24f8a6f34ccc5368f3b31bace53ebbe"


def test_face_embedding_photos_are_unchanged_by_renderer_extensions():
    digest = hashlib.sha256()
    for size in (64, 80):
        faces = SyntheticFaces(5, 3, size=size, seed=3, identity_offset=100_000)
        for index in range(len(faces)):
            digest.update(faces.image(index).tobytes())
    assert digest.hexdigest() == FACE_EMBEDDING_PIXELS
