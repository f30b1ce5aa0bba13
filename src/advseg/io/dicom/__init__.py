"""DICOM: CT series in (:mod:`.series`), RTSTRUCT in and out (:mod:`.rtstruct`), DICOM SEG out
(:mod:`.seg`), ROI-name synonyms (:mod:`.names`), CT series out for tests and conversions
(:mod:`.ctwrite`), the :mod:`advseg.io` reader/writer of a series folder (:mod:`.volume`)."""
