"""De-identify DICOM headers: the DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile with
the Retain Longitudinal Temporal Information Modified Dates Option, the same way for the same secret salt.

``dicognito`` does the remapping. Every UID but class and transfer syntax UIDs becomes a keyed hash of the
old one, so a study, frame of reference or referenced instance gets the same new UID in every file and
every run with one salt, and unrelated ones with another. Other person names and IDs (AccessionNumber,
StudyID) become keyed dummies; dates move back by one whole number of days, 62 to 730, fixed by the salt.

``Deidentifier`` adds what the profile asks and dicognito leaves: private attributes, curves and overlays,
free text and AE titles, and the attributes the profile removes or empties (institution, physicians,
operators, device serial number, birth date, sex, age, size, weight, requests and procedure steps, ...).
PatientID and PatientName both become the pseudonym ``cdm4mi.cohort.discover.pseudonymize`` gives the
PatientID, which is what cdm4mi's manifests use for that patient, so output files next to the manifest.
Last it records PatientIdentityRemoved YES, the method, its codes (113100 and 113107) and
LongitudinalTemporalInformationModified MODIFIED.

Pixel data is not touched: the Clean Pixel Data and Clean Recognizable Visual Features options are not
applied (a head scan can still show a face), and an image marked BurnedInAnnotation YES is refused.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
from collections.abc import Collection

from pydicom.datadict import keyword_dict
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from cdm4mi.extras import require
from cdm4mi.io.header_values import describe, unvalidated
from cdm4mi.io.pseudonyms import MIN_SALT_BYTES, pseudonymize

BASIC_PROFILE = ("113100", "Basic Application Confidentiality Profile")
MODIFIED_DATES_OPTION = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
METHOD = "cdm4mi: basic profile, modified dates (dicognito {version})"
"""DeidentificationMethod, with the version of dicognito (the ``deid`` extra, imported by ``Deidentifier``)."""
DATE_SHIFT_DAYS = (62, 730)
"""Range of the backward date shift, dicognito's own."""

# Attributes the profile removes (action X, or X/Z, X/D, X/Z/D) that dicognito keeps or fills with dummies.
_REMOVED_KEYWORDS = (
    # patient
    "PatientAge", "PatientSize", "PatientWeight", "PatientAddress", "PatientBirthName", "PatientBirthTime",
    "PatientMotherBirthName", "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames",
    "IssuerOfPatientID", "PatientComments", "AdditionalPatientHistory", "Allergies", "MedicalAlerts",
    "EthnicGroup", "PregnancyStatus", "SmokingStatus", "LastMenstrualDate", "CountryOfResidence",
    "RegionOfResidence", "ReferencedPatientSequence", "ResponsiblePerson", "PatientState", "SpecialNeeds",
    "InsurancePlanIdentification", "PatientPrimaryLanguageCodeSequence",
    # visit and admission
    "AdmissionID", "AdmittingDate", "AdmittingTime", "AdmittingDiagnosesDescription",
    "AdmittingDiagnosesCodeSequence", "IssuerOfAdmissionIDSequence", "CurrentPatientLocation",
    "PatientInstitutionResidence", "ServiceEpisodeID", "ServiceEpisodeDescription", "DischargeDate",
    "DischargeTime",
    # study, request and procedure steps
    "StudyDescription", "StudyIDIssuer", "ReasonForStudy", "ReasonForVisit", "ReasonForVisitCodeSequence",
    "RequestingPhysician", "RequestingService", "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
    "ReferringPhysicianIdentificationSequence", "ConsultingPhysicianIdentificationSequence", "PhysiciansOfRecord",
    "PhysiciansOfRecordIdentificationSequence", "NameOfPhysiciansReadingStudy",
    "PhysiciansReadingStudyIdentificationSequence", "ReferencedStudySequence", "RequestAttributesSequence",
    "RequestedProcedureDescription", "RequestedProcedureID", "RequestedProcedureLocation",
    "ReasonForTheRequestedProcedure", "ReasonForRequestedProcedureCodeSequence",
    "ReasonForTheImagingServiceRequest", "IssueDateOfImagingServiceRequest", "IssueTimeOfImagingServiceRequest",
    "OrderEnteredBy", "OrderEntererLocation", "OrderCallbackPhoneNumber", "ReferencedPerformedProcedureStepSequence",
    "PerformedProcedureStepID", "PerformedProcedureStepDescription", "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime", "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime",
    "PerformedLocation", "PerformedStationName", "ScheduledProcedureStepID", "ScheduledProcedureStepDescription",
    "ScheduledProcedureStepLocation", "ScheduledPerformingPhysicianName", "ScheduledStationName",
    "ScheduledHumanPerformersSequence", "ActualHumanPerformersSequence", "HumanPerformerName",
    "HumanPerformerOrganization",
    # series, equipment and acquisition
    "SeriesDescription", "ProtocolName", "PerformingPhysicianName", "PerformingPhysicianIdentificationSequence",
    "OperatorsName", "OperatorIdentificationSequence", "InstitutionName", "InstitutionAddress",
    "InstitutionalDepartmentName", "InstitutionCodeSequence", "StationName", "DeviceSerialNumber",
    "UniqueDeviceIdentifier", "UDISequence", "GantryID", "GeneratorID", "DetectorID", "PlateID", "CassetteID",
    "DateOfLastCalibration", "TimeOfLastCalibration", "DateOfLastDetectorCalibration",
    "TimeOfLastDetectorCalibration", "AcquisitionDeviceProcessingDescription", "ContrastBolusStartTime",
    "ContrastBolusStopTime", "TimezoneOffsetFromUTC", "DateOfSecondaryCapture", "TimeOfSecondaryCapture",
    # images and instances
    "IconImageSequence", "DataSetTrailingPadding", "DigitalSignaturesSequence", "OriginalAttributesSequence",
    "ModifiedAttributesSequence", "ModifyingDeviceID", "ModifiedImageDescription",
)
_REMOVED = frozenset(keyword_dict[keyword] for keyword in _REMOVED_KEYWORDS)  # a misspelt keyword fails at import
# Free text may name anyone, and AE titles name devices and sites: the profile removes every one it lists.
_REMOVED_VRS = frozenset({"LT", "ST", "UT", "AE"})
_REMOVED_GROUPS = frozenset({0x5000, 0x6000})  # curves and overlays (their data and comments are X)
# Action Z (emptied) where a dummy would still carry the value's meaning, or a made-up person.
_EMPTIED = ("PatientBirthDate", "PatientSex", "ReferringPhysicianName", "ContrastBolusAgent")


class Deidentifier:
    """De-identifies pydicom datasets in place, the same way for the same salt (module docstring).

    PatientName becomes the PatientID pseudonym rather than dicognito's made-up name: a made-up name reads
    like a real person and ties to nothing, while the pseudonym is plainly not a name and is the one the
    manifest lists for that patient.
    """

    def __init__(self, salt: bytes) -> None:
        """``salt``: the secret of ``--salt-file`` (at least 16 bytes), the one the manifest was built with."""
        if not isinstance(salt, bytes) or len(salt) < MIN_SALT_BYTES:
            raise ValueError(f"salt must be at least {MIN_SALT_BYTES} bytes")
        require("dicognito", "DICOM de-identification (--deidentify)")
        from dicognito.anonymizer import Anonymizer
        from dicognito.datetimeanonymizer import DateTimeAnonymizer

        self._salt = salt
        self._anonymizer = Anonymizer(seed=_keyed(salt, b"dicognito seed"))
        low, high = DATE_SHIFT_DAYS
        days = low + int(_keyed(salt, b"date shift"), 16) % (high - low + 1)
        # Whole days keep every interval exact, also between a date with a time and one without; dicognito's
        # own shift is in hours, which moves a date without a time by a day less than one with a late time.
        self._dates = DateTimeAnonymizer(-24 * days)
        self._anonymizer.add_element_handler(self._dates)

    @unvalidated()  # pydicom's validation warnings would quote the values being removed
    def deidentify(self, dataset: Dataset, keep: Collection[str] = ()) -> None:
        """De-identify ``dataset``, its sequences and its file meta (created empty if missing) in place.

        ``keep``: keywords of top-level attributes the caller wrote itself and vouches for, left as they are
        (a writer's own SeriesDescription, which the profile would remove).

        Raises:
            ValueError: BurnedInAnnotation is YES, or a date or time that is kept (shifted) is not one dicognito
                can read; the message names the element, never its value, and ``dataset`` is untouched.
        """
        if dataset.get("BurnedInAnnotation") == "YES":
            raise ValueError("the image is marked BurnedInAnnotation YES: text in its pixels cannot be de-identified")
        self._check_dates(dataset)
        kept = [copy.deepcopy(dataset[keyword]) for keyword in keep if keyword in dataset]
        patient_id = str(dataset.get("PatientID") or "").strip()  # stripped, as pairing.scan_folder keys patients
        methods = dataset.get("DeidentificationMethod") or []
        earlier_methods = [methods] if isinstance(methods, str) else [str(method) for method in methods]
        dataset.ensure_file_meta()
        dataset.remove_private_tags()
        # What goes anyway goes first: a birth date written 1980-02-14 is emptied, not refused by dicognito.
        _remove_and_empty(dataset)
        self._anonymizer.anonymize(dataset)
        _remove_and_empty(dataset)  # anything dicognito filled in
        for element in kept:
            dataset[element.tag] = element
        pseudonym = pseudonymize(patient_id, self._salt) if patient_id else None
        dataset.PatientID = dataset.PatientName = pseudonym
        _record(dataset, earlier_methods)


    def _check_dates(self, dataset: Dataset) -> None:
        """Shift each kept date and date-time (with a date's time) of ``dataset`` on a copy first, so that one
        dicognito cannot read is refused by name before anything changes."""
        unreadable: list[DataElement] = []

        def trial(parent: Dataset, element: DataElement) -> None:
            if element.VR not in ("DA", "DT") or not element.value or _goes(element):
                return
            single = Dataset()
            single[element.tag] = copy.deepcopy(element)
            time_keyword = element.keyword.replace("Date", "Time")
            if element.VR == "DA" and time_keyword in parent:
                single[time_keyword] = copy.deepcopy(parent[time_keyword])
            try:
                self._dates(single, single[element.tag])
            except (ValueError, TypeError):  # dicognito's messages quote the value; walk() would add a traceback
                unreadable.append(element)

        dataset.walk(trial)
        if unreadable:
            raise ValueError(f"header element {describe(unreadable[0])} (nor an ACR-NEMA date), so it cannot be "
                             "shifted")


def _goes(element: DataElement) -> bool:
    """Whether de-identification removes or empties ``element`` whatever its value."""
    return (element.tag in _REMOVED or element.VR in _REMOVED_VRS or element.tag.group & 0xFF00 in _REMOVED_GROUPS
            or element.keyword in _EMPTIED)


def _remove_and_empty(dataset: Dataset) -> None:
    dataset.walk(_remove_identifying)
    dataset.file_meta.walk(_remove_identifying)
    for keyword in _EMPTIED:
        if keyword in dataset:
            setattr(dataset, keyword, None)


def _keyed(salt: bytes, purpose: bytes) -> str:
    """HMAC-SHA256 hex of ``purpose`` under ``salt``. ``pseudonymize`` keys PatientIDs under the same salt; a
    PatientID holds no NUL, so these never coincide with a pseudonym."""
    return hmac.new(salt, b"cdm4mi\x00deidentify\x00" + purpose, hashlib.sha256).hexdigest()


def _remove_identifying(dataset: Dataset, element: DataElement) -> None:
    if _goes(element) and element.keyword not in _EMPTIED:
        del dataset[element.tag]


def _record(dataset: Dataset, earlier_methods: list[str]) -> None:
    """PatientIdentityRemoved, the method and its codes (after any of an earlier de-identification)."""
    dataset.PatientIdentityRemoved = "YES"
    import dicognito  # Deidentifier required it

    method = METHOD.format(version=dicognito.__version__)
    dataset.DeidentificationMethod = [earlier for earlier in earlier_methods if earlier != method] + [method]
    codes = list(dataset.get("DeidentificationMethodCodeSequence") or [])
    present = {(item.get("CodingSchemeDesignator"), item.get("CodeValue")) for item in codes}
    codes += [_code(value, meaning) for value, meaning in (BASIC_PROFILE, MODIFIED_DATES_OPTION)
              if ("DCM", value) not in present]
    dataset.DeidentificationMethodCodeSequence = codes
    dataset.LongitudinalTemporalInformationModified = "MODIFIED"


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item

