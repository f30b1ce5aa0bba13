"""DICOM: CT series in (:mod:`.series`), RTSTRUCT in and out (:mod:`.rtstruct`), DICOM SEG out
(:mod:`.seg`), ROI-name synonyms (:mod:`.names`), CT series out for tests and conversions
(:mod:`.ctwrite`)."""
