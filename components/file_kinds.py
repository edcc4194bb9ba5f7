"""Which files in an image folder are not meant as images (no TensorFlow here).

Notes, labels and metadata next to the images (README.md, labels.csv,
.DS_Store) are not bad images: they are left out by name, listed apart, and
never count against max_bad_fraction. Anything else is tried as an image.
"""
import os

NOT_IMAGE_SUFFIXES = (".txt", ".md", ".json", ".csv", ".tsv", ".yaml", ".yml", ".xml", ".html",
                      ".py", ".ipynb", ".pdf", ".zip", ".tar", ".gz", ".db", ".ini", ".log")


def is_not_image(path: str) -> bool:
    name = os.path.basename(path)
    return name.startswith(".") or name.lower().endswith(NOT_IMAGE_SUFFIXES)
