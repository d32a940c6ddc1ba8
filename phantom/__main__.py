"""The command line: ``python -m phantom --out data/phantom --studies 2000 --seed 0`` (see --help)."""
from __future__ import annotations

import argparse
import logging
import sys

from errors import ArgumentParser, non_negative_int, positive_int, run_cli

from . import __doc__ as DESCRIPTION
from .checks import contact_sheet, learnability
from .writers import generate

log = logging.getLogger("phantom")

LAYOUT = """layout written under --out:
  mimic-cxr-jpg/2.0.0/files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg
  mimic-cxr-jpg/2.0.0/mimic-cxr-2.0.0-{metadata,split,chexpert}.csv.gz
  mimic-cxr/2.0.0/files/pXX/pXXXXXXXX/sXXXXXXXX.txt            (reports)
  chexpert-test/groundtruth.csv
  chexpert-test/gt_segmentations.json                            (regions of the drawn findings, below)
  chexpert-test/test/patientNNNNN/study1/view1_frontal.jpg      (+ some view2_lateral.jpg)
  chexpert/CheXpert-v1.0-small/valid.csv
  chexpert/CheXpert-v1.0-small/gt_segmentations_valid.json
  chexpert/CheXpert-v1.0-small/valid/patientNNNNN/study1/*.jpg
  padchest/PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv
  padchest/<ImageDir>/<ImageID>                                  (16-bit PNG, 12-bit values)
  manifest.json                                                  (seed, counts, edge cases)
gt_segmentations*.json (segmentations.py; CheXlocalize's gt_segmentations_{val,test}.json layout): one JSON
  object, one image per line, {image key: {CheXpert label: mask}} for every image, frontal and lateral, that
  shows a drawn finding (images without one are absent; No Finding has no mask). The key is the image path's
  patient, study and file stem joined by "_": patient64741_study1_view1_frontal. The mask, at the file's own
  pixel size, is COCO's uncompressed RLE {"size": [height, width], "counts": [...]}: run lengths down the
  columns (Fortran order), starting with a run of zeros (pycocotools.mask.frPyObjects reads it). A painted
  finding's mask: the pixels its drawing changed by at least 2% of the display window (about 5 grey levels
  of 255, before gamma), against the film as it was before it (one painted over an earlier finding's
  opacity may show less, and an empty mask is left out); Cardiomegaly: the heart; Enlarged Cardiomediastinum
  (frontal): the mediastinum from the apices to the left dome; Fracture: where the break moves the rib.
  Drawn at 224 px, then resized to the file size like the image (bilinear) and thresholded at 0.5.
with --dicom [N] (phantom/dicom.py), also:
  mimic-cxr/2.0.0/files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.dcm   (the first N undamaged MIMIC JPGs)
  mimic-cxr/2.0.0/cxr-record-list.csv.gz                          (subject_id, study_id, dicom_id, path)
  dicom/variants/<variant>.dcm      (MONOCHROME1/2 x 8/12/16 bits x window, windows, VOI LUT, SIGMOID
                                     x Modality LUT or not x 6 transfer syntaxes)
  dicom/edge_cases/                 (multi-frame, no Pixel Data, RGB, truncated, IM000001 without extension)"""


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m phantom", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=LAYOUT)
    parser.add_argument("--out", default="data/phantom", help="root folder to write (default: data/phantom)")
    parser.add_argument("--studies", type=positive_int, default=2000, help="MIMIC-CXR studies (default: 2000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives byte-identical files")
    parser.add_argument("--test_studies", type=non_negative_int, default=500,
                        help="CheXpert test studies, patients 64741+ (default: 500)")
    parser.add_argument("--valid_studies", type=non_negative_int, default=200,
                        help="CheXpert valid studies, patients 64541-64740 (default and maximum: 200)")
    parser.add_argument("--padchest_images", type=non_negative_int, default=300,
                        help="PadChest rows sampled from the Physician-labelled rows (default: 300)")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="processes drawing images (default: all cores)")
    parser.add_argument("--dicom", type=non_negative_int, nargs="?", const=sys.maxsize, metavar="N",
                        help="also write DICOM copies of the first N MIMIC images (all of them with --dicom alone) "
                             "and the DICOM variants and edge cases under dicom/ (default: no DICOM)")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete an earlier phantom root at --out first (a non-empty --out is refused otherwise)")
    parser.add_argument("--contact_sheet", metavar="PATH",
                        help="only write a captioned grid of frontal phantoms to PATH (e.g. docs/phantoms.png)")
    parser.add_argument("--learnability", action="store_true",
                        help="only print the learnability check: held-out AUROC of logistic regression on 64x64 "
                             "pixels and of mean intensity, per competition finding, on 600 frontal phantoms")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.contact_sheet:
        contact_sheet(args.contact_sheet, args.seed)
        log.info("wrote %s", args.contact_sheet)
    elif args.learnability:
        for label, scores in learnability(seed=args.seed, workers=args.workers).items():
            log.info("%-17s logistic regression AUROC %.3f   mean intensity AUROC %.3f",
                     label, scores["logreg_auroc"], scores["mean_intensity_auroc"])
    else:
        generate(args.out, args.studies, args.seed, args.test_studies, args.valid_studies, args.padchest_images,
                 args.workers, args.overwrite, args.dicom)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
