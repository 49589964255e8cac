"""Block-device and boot settings as AWS keeps them (imported by moto_patched).

moto 5.2.1 drops what a restore depends on: RegisterImage keeps only the
snapshot of each mapping, RunInstances makes every volume without IOPS or
throughput, a snapshot forgets its volume's KMS key, and nothing refuses
combinations AWS refuses. This module patches moto in-process so that:

  * RegisterImage keeps each mapping's VolumeType (AWS's default gp2 when
    none is given), Iops, Throughput, VolumeSize and DeleteOnTermination,
    and the image's BootMode, TpmSupport, EnaSupport, SriovNetSupport,
    ImdsSupport and VirtualizationType; DescribeImages shows them.
  * RegisterImage refuses, with AWS's codes:
      - Encrypted or KmsKeyId on a mapping with a SnapshotId
        (InvalidBlockDeviceMapping: the encryption of a volume made from a
        snapshot is the snapshot's; KmsKeyId belongs to RunInstances);
      - Iops on a type without provisioned IOPS, io1/io2 without Iops,
        Throughput on anything but gp3 (InvalidParameterCombination);
      - TpmSupport v2.0 without BootMode uefi (InvalidParameterCombination).
  * RunInstances from such an image makes each volume from the image's
    mapping merged with RunInstances' own mapping for the same device
    (fields the launch sets win, as on AWS), with its type, IOPS,
    throughput, encryption and KMS key, and refuses what RegisterImage
    refuses (KmsKeyId without Encrypted: InvalidParameterDependency). The
    instance carries the image's BootMode, TpmSupport and EnaSupport, and
    an image with ImdsSupport v2.0 launches with HttpTokens required
    unless the launch says otherwise.
  * A snapshot of an encrypted volume keeps the volume's KMS key, and a
    volume made from it is encrypted under that key unless another is
    given (as on AWS).
  * gp3 volumes made without Throughput have AWS's baseline 125 MiB/s,
    and ModifyVolume to another type drops throughput (and IOPS where the
    new type has none).
  * CreateVolume honours ClientToken (moto 5.2.1 ignores it): the same
    token returns the volume the first call made, as AWS documents
    ("Ensure idempotency"), so a retried call makes no second volume; with
    other arguments it answers IdempotentParameterMismatch.
"""

import threading

from moto.core.responses import ActionResult
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models import elastic_block_store as ebs_models
from moto.ec2.models import instances as instance_models
from moto.ec2.responses import amis as ami_responses
from moto.ec2.responses import elastic_block_store as ebs_responses
from moto.ec2.responses import instances as instance_responses

IOPS_TYPES = ("io1", "io2", "gp3")
IOPS_REQUIRED = ("io1", "io2")
THROUGHPUT_TYPES = ("gp3",)
GP3_BASELINE_THROUGHPUT = 125

# Per-thread IOPS and throughput of the mappings being launched, by device:
# moto's add_block_device has no parameters for them.
_launch = threading.local()


def _combination(msg):
    return EC2ClientError("InvalidParameterCombination", msg)


def _int(value):
    if value in (None, ""):
        return None
    return int(value)


def _bool(value):
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    return str(value).lower() == "true"


def _check_performance(device, vtype, iops, throughput):
    """AWS's rules for IOPS and throughput by volume type."""
    vtype = vtype or "gp2"
    if iops is not None and vtype not in IOPS_TYPES:
        raise _combination(f"The parameter iops is not supported for {vtype} volumes.")
    if iops is None and vtype in IOPS_REQUIRED:
        raise _combination(f"The parameter iops must be specified for {vtype} volumes.")
    if throughput is not None and vtype not in THROUGHPUT_TYPES:
        raise _combination("throughput can only be specified for volumeType gp3.")


# --- snapshots keep their volume's key -----------------------------------------

_prev_create_snapshot = ebs_models.EBSBackend.create_snapshot


def _create_snapshot(self, *args, **kwargs):
    snapshot = _prev_create_snapshot(self, *args, **kwargs)
    volume = snapshot.volume
    if volume is not None and getattr(volume, "encrypted", False) and getattr(volume, "kms_key_id", None):
        snapshot.encrypted = True
        snapshot.kms_key_id = volume.kms_key_id
    return snapshot


ebs_models.EBSBackend.create_snapshot = _create_snapshot

_prev_create_volume = ebs_models.EBSBackend.create_volume


def _create_volume(self, size, zone_name, snapshot_id=None, encrypted=False, kms_key_id=None,
                   volume_type=None, iops=None, throughput=None, multi_attach_enabled=None):
    _check_performance("", volume_type, _int(iops), _int(throughput))
    if kms_key_id and not encrypted:
        raise EC2ClientError(
            "InvalidParameterDependency",
            "The parameter KmsKeyId requires the parameter Encrypted to be set.",
        )
    if snapshot_id:
        snapshot = self.get_snapshot(snapshot_id)
        if getattr(snapshot, "status", "completed") != "completed":
            # AWS makes volumes from completed snapshots only.
            raise EC2ClientError(
                "IncorrectState",
                f"Snapshot '{snapshot_id}' is not in a valid state for this operation: {snapshot.status}",
            )
        if snapshot.encrypted:
            # A volume from an encrypted snapshot stays encrypted, under the
            # snapshot's key unless the call names another.
            encrypted = True
            if not kms_key_id:
                kms_key_id = getattr(snapshot, "kms_key_id", None)
    if (volume_type or "gp2") == "gp3" and throughput is None:
        throughput = GP3_BASELINE_THROUGHPUT
    return _prev_create_volume(
        self, size, zone_name, snapshot_id=snapshot_id, encrypted=encrypted, kms_key_id=kms_key_id,
        volume_type=volume_type, iops=_int(iops), throughput=_int(throughput),
        multi_attach_enabled=multi_attach_enabled,
    )


ebs_models.EBSBackend.create_volume = _create_volume

_prev_create_volume_response = ebs_responses.ElasticBlockStore.create_volume
_tokens_lock = threading.Lock()


def _create_volume_response(self):
    token = self._get_param("ClientToken")
    if not token or self._get_param("DryRun"):
        return _prev_create_volume_response(self)
    backend = self.ec2_backend
    # The call's own arguments: the same token with others is refused.
    args = tuple(sorted(
        (k, tuple(v)) for k, v in self.querystring.items()
        if k not in ("Action", "Version", "ClientToken", "DryRun")
    ))
    # On the backend: a reset replaces it, and the tokens go with it.
    with _tokens_lock:
        tokens = backend.__dict__.setdefault("_circlebot_volume_tokens", {})
        first = tokens.get(token)
    if first is not None:
        vid, first_args = first
        if first_args != args:
            raise EC2ClientError(
                "IdempotentParameterMismatch",
                "Arguments on this idempotent request are inconsistent with arguments used in previous request(s).",
            )
        if vid in backend.volumes:
            # AWS answers the first call's volume, in its state now.
            return ActionResult(backend.volumes[vid])
    result = _prev_create_volume_response(self)
    volume = getattr(result, "result", None)
    vid = getattr(volume, "id", None)
    if vid:
        with _tokens_lock:
            tokens[token] = (vid, args)
    return result


ebs_responses.ElasticBlockStore.create_volume = _create_volume_response


_prev_volume_modify = ebs_models.Volume.modify


def _volume_modify(self, *args, **kwargs):
    result = _prev_volume_modify(self, *args, **kwargs)
    # AWS keeps throughput only on gp3 and provisioned IOPS only where the
    # type has them (gp2's are its baseline, not a setting).
    if self.volume_type not in THROUGHPUT_TYPES:
        self.throughput = None
    if self.volume_type not in IOPS_TYPES:
        self.iops = None
    return result


ebs_models.Volume.modify = _volume_modify


# --- RegisterImage ---------------------------------------------------------------

_prev_register_image = ami_responses.AmisResponse.register_image


def _register_image(self):
    mappings = self._get_param("BlockDeviceMappings", []) or []
    for m in mappings:
        ebs = m.get("Ebs") or {}
        device = m.get("DeviceName")
        if ebs.get("SnapshotId") and ("Encrypted" in ebs or "KmsKeyId" in ebs):
            raise EC2ClientError(
                "InvalidBlockDeviceMapping",
                f"the encrypted flag cannot be specified since device {device} has a snapshot specified.",
            )
        if ebs:
            _check_performance(device, ebs.get("VolumeType"), _int(ebs.get("Iops")), _int(ebs.get("Throughput")))
    for m in mappings:
        ebs = m.get("Ebs") or {}
        if ebs.get("SnapshotId") and not self._get_param("DryRun"):
            # The parameters first, then the state: AWS registers images of
            # completed snapshots only.
            snapshot = self.ec2_backend.get_snapshot(ebs["SnapshotId"])
            if getattr(snapshot, "status", "completed") != "completed":
                raise EC2ClientError(
                    "IncorrectState",
                    f"Snapshot '{ebs['SnapshotId']}' is not in a valid state for this operation: {snapshot.status}",
                )
    boot_mode = self._get_param("BootMode")
    tpm = self._get_param("TpmSupport")
    if tpm and boot_mode != "uefi":
        raise _combination("TpmSupport v2.0 requires the boot mode uefi.")
    result = _prev_register_image(self)
    image = self.ec2_backend.amis[result.result["ImageId"]]
    by_device = {m.get("DeviceName"): (m.get("Ebs") or {}) for m in mappings}
    for kept in getattr(image, "_circlebot_bdm", []) or []:
        ebs = by_device.get(kept["DeviceName"], {})
        kept["Ebs"]["VolumeType"] = ebs.get("VolumeType") or "gp2"
        if _int(ebs.get("VolumeSize")):
            kept["Ebs"]["VolumeSize"] = _int(ebs.get("VolumeSize"))
        for key in ("Iops", "Throughput"):
            if _int(ebs.get(key)) is not None:
                kept["Ebs"][key] = _int(ebs.get(key))
        snapshot = self.ec2_backend.get_snapshot(kept["Ebs"]["SnapshotId"]) if kept["Ebs"].get("SnapshotId") else None
        if snapshot is not None and snapshot.encrypted:
            # DescribeImages shows the encryption the snapshot gives.
            kept["Ebs"]["Encrypted"] = True
            if getattr(snapshot, "kms_key_id", None):
                kept["Ebs"]["KmsKeyId"] = snapshot.kms_key_id
    image.boot_mode = boot_mode or None
    image.tpm_support = tpm or None
    ena = _bool(self._get_param("EnaSupport"))
    image.ena_support = ena
    image.sriov_net_support = self._get_param("SriovNetSupport") or None
    image.imds_support = self._get_param("ImdsSupport") or None
    return result


ami_responses.AmisResponse.register_image = _register_image


# --- RunInstances ----------------------------------------------------------------

_prev_parse_bdm = instance_responses.InstanceResponse._parse_block_device_mapping
_prev_validate_bdm = instance_responses.InstanceResponse._validate_block_device_mapping


def _validate_bdm(device_mapping):
    # A mapping for a device of the image may leave SnapshotId and
    # VolumeSize to the image (AWS merges them); run_instances checks the
    # merged mapping.
    if "NoDevice" in device_mapping or "Ebs" not in device_mapping:
        return _prev_validate_bdm(device_mapping)
    return None


instance_responses.InstanceResponse._validate_block_device_mapping = staticmethod(_validate_bdm)


def _parse_bdm(self):
    parsed = _prev_parse_bdm(self)
    raw = self._get_param("BlockDeviceMappings", []) or []
    for out, m in zip(parsed, raw):
        ebs = m.get("Ebs") or {}
        out["Ebs"]["Throughput"] = ebs.get("Throughput")
        # Which fields the launch set (moto fills the rest with defaults).
        out["_circlebot_set"] = set(ebs.keys())
    return parsed


instance_responses.InstanceResponse._parse_block_device_mapping = _parse_bdm


def _merge(image_bdm, launch_bdm):
    merged = []
    launch = {m.get("DeviceName"): m for m in launch_bdm or []}
    for m in image_bdm or []:
        ebs = dict(m["Ebs"])
        override = launch.pop(m["DeviceName"], None)
        if override is not None:
            if override.get("NoDevice") == "":
                continue
            for key in override.get("_circlebot_set", set()):
                ebs[key] = override["Ebs"].get(key)
        merged.append({"DeviceName": m["DeviceName"], "Ebs": ebs})
    for m in launch_bdm or []:
        if m.get("DeviceName") in launch:
            ebs = {k: m["Ebs"].get(k) for k in m.get("_circlebot_set", set(m["Ebs"].keys()))}
            merged.append({"DeviceName": m["DeviceName"], "Ebs": ebs, "NoDevice": m.get("NoDevice")})
    return merged


_prev_run_instances = instance_models.InstanceBackend.run_instances


def _run_instances(self, image_id, count, user_data, security_group_names, **kwargs):
    ami = self.amis.get(image_id) if hasattr(self, "amis") else None
    image_bdm = getattr(ami, "_circlebot_bdm", None)
    launch_bdm = kwargs.get("block_device_mappings")
    if image_bdm or launch_bdm:
        merged = _merge(image_bdm, launch_bdm)
        specs = {}
        for m in merged:
            ebs = m["Ebs"]
            if m.get("NoDevice") == "":
                continue
            if not ebs.get("SnapshotId") and not _int(ebs.get("VolumeSize")):
                raise EC2ClientError(
                    "InvalidBlockDeviceMapping",
                    f"Either snapshot ID or volume size must be provided for: {m['DeviceName']}",
                )
            iops, throughput = _int(ebs.get("Iops")), _int(ebs.get("Throughput"))
            _check_performance(m["DeviceName"], ebs.get("VolumeType"), iops, throughput)
            if ebs.get("KmsKeyId") and not _bool(ebs.get("Encrypted")):
                raise EC2ClientError(
                    "InvalidParameterDependency",
                    "The parameter KmsKeyId requires the parameter Encrypted to be set.",
                )
            ebs["Encrypted"] = bool(_bool(ebs.get("Encrypted")))
            ebs["DeleteOnTermination"] = bool(_bool(ebs.get("DeleteOnTermination")))
            specs[m["DeviceName"]] = (iops, throughput)
        kwargs["block_device_mappings"] = merged
        _launch.specs = specs
    if ami is not None and getattr(ami, "imds_support", None) == "v2.0":
        options = dict(kwargs.get("metadata_options") or {})
        options.setdefault("HttpTokens", "required")
        kwargs["metadata_options"] = options
    try:
        reservation = _prev_run_instances(self, image_id, count, user_data, security_group_names, **kwargs)
    finally:
        _launch.specs = None
    if ami is not None and hasattr(ami, "ena_support"):
        for inst in reservation.instances:
            inst.boot_mode = getattr(ami, "boot_mode", None)
            inst.tpm_support = getattr(ami, "tpm_support", None)
            inst.ena_support = getattr(ami, "ena_support", None)
            if getattr(ami, "sriov_net_support", None) is None:
                inst.sriov_net_support = None
    return reservation


instance_models.InstanceBackend.run_instances = _run_instances

_prev_add_block_device = instance_models.Instance.add_block_device


def _add_block_device(self, size, device_path, snapshot_id, encrypted, delete_on_termination, kms_key_id, volume_type):
    iops, throughput = (getattr(_launch, "specs", None) or {}).get(device_path, (None, None))
    volume = self.ec2_backend.create_volume(
        size=size, zone_name=self._placement.zone, snapshot_id=snapshot_id, encrypted=encrypted,
        kms_key_id=kms_key_id, volume_type=volume_type, iops=iops, throughput=throughput,
    )
    self.ec2_backend.attach_volume(volume.id, self.id, device_path, delete_on_termination)


instance_models.Instance.add_block_device = _add_block_device
