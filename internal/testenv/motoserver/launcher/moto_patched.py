"""moto_server whose EBS snapshots stay pending until a test moves them.

moto 5.2.1 marks every EBS snapshot "completed" (progress 100%) the moment it
is created. Real snapshots stay "pending" for minutes to hours and can end in
"error". This launcher patches moto in-process and then runs moto_server's
own main(), so it takes exactly the same CLI flags (-H host -p port ...).

Patched behaviour:
  * CreateSnapshot and CreateSnapshots (and the EBS direct StartSnapshot)
    create snapshots in State "pending", Progress "0%". Snapshots that moto
    makes behind an AMI (from_ami) and CopySnapshot are unchanged.
  * CreateSnapshots' answer carries each snapshot's State (plain moto leaves
    it out).

  * Restores (what the bot's restore needs and moto 5.2.1 lacks):
    - TerminateInstances deletes the instance's primary network interface,
      as AWS does for one made at launch, so its private IP is free again.
    - TerminateInstances detaches (as "available") the interfaces it
      keeps (DeleteOnTermination false).
    - AssignPrivateIpAddresses of an address another interface holds
      (without AllowReassignment), and AttachNetworkInterface at a device
      index in use, answer InvalidParameterValue.
    - RunInstances with a PrivateIpAddress in use answers
      InvalidIPAddress.InUse (plain moto: HTTP 500).
    - RunInstances honours ClientToken: the same token returns the first
      launch's reservation instead of a second instance.
    - RegisterImage keeps BlockDeviceMappings, RootDeviceName,
      Architecture and the image's TagSpecifications; DescribeImages shows them and RunInstances from that
      image makes one volume per mapping from its snapshot.
    - CreateImage (moto 5.2.1 keeps no volumes and fails on snapshot tags)
      snapshots each EBS volume of the instance (completed, as snapshots
      behind an AMI are), keeps the mapping (device, size, type,
      DeleteOnTermination) as RegisterImage does, tags the image and the
      snapshots from TagSpecifications (other resource types answer
      InvalidParameterValue), answers InvalidAMIName.Duplicate for a name
      the account uses and IncorrectInstanceState for an instance that is
      neither running nor stopped; POST /_circlebot/images holds it pending
      too.
    - Instance types named by POST /_circlebot/capacity answer
      InsufficientInstanceCapacity, in RunInstances and in StartInstances
      of a stopped instance of that type.

  * Dry runs (what AWS checks before it answers DryRunOperation):
    - RunInstances with DryRun refuses a private IP or an interface in
      use (AWS does not document whether it checks; the stricter
      reading), and validates the image, subnet, security groups, key
      pair, instance type (known, of the image's architecture) and at
      most 50 tags per resource first; plain moto answers
      DryRunOperation to nearly anything.

  * Instance types (what AWS refuses and moto 5.2.1 accepts):
    - ModifyInstanceAttribute InstanceType on an instance that is not
      stopped answers IncorrectInstanceState, and a type moto does not
      know answers InvalidParameterValue.

  * CloudFormation (what the stack test, deploy/cloudformation, needs and
    moto 5.2.1 gets wrong; AWS does as patched):
    - {"Ref": "AWS::NoValue"} in a list removes the element (plain moto
      leaves a null in the list, e.g. a null IAM statement).
    - AWS::IAM::Role's inline Policies are stored as JSON (plain moto
      stores the Python repr of the document).
    - AWS::DynamoDB::Table's PointInTimeRecoverySpecification is applied.
    - AWS::CloudWatch::Alarm is created (plain moto skips it).
    - IAM's quotas on managed policies hold once CloudFormation is in use
      (they are patched in with it): CreatePolicy of a document over 6,144
      characters (white space not counted) and AttachRolePolicy of an 11th
      policy answer LimitExceeded.
    - A resource type moto cannot create fails the stack (plain moto
      skips it with a warning and reports the stack complete, so a test
      could never see the resource is missing).

Control API on the same HTTP server (paths moto does not use):
  POST /_circlebot/snapshots
       {"snapshot_id": "snap-...", "state": "completed|pending|error",
        "progress": "45%"}              progress optional: completed -> 100%,
                                         otherwise the current value is kept
        "started_ago": 120}             optional: StartTime that many seconds
                                         ago (a rate of progress to estimate
                                         from without waiting for it)
  POST /_circlebot/snapshots/auto
       {"complete_after_describes": N}  every pending snapshot becomes
                                         completed/100% once N DescribeSnapshots
                                         calls have returned it while auto mode
                                         is on; N=0 turns auto mode off.
                                         Setting N restarts every count.
  GET  /_circlebot/snapshots            {"complete_after_describes": N,
                                         "snapshots": [{snapshot_id, state,
                                         progress, volume_id, account_id,
                                         region, describes}]}
  POST /_circlebot/images
       {"pending": true|false}           RegisterImage makes images that stay
                                         "pending"; false makes them available.
  POST /_circlebot/capacity
       {"unavailable": ["m5.xlarge", ...]} RunInstances of these types, and
                                         StartInstances of stopped instances of
                                         them, answer
                                         InsufficientInstanceCapacity; [] clears.
  POST /moto-api/reset                  moto's reset, auto mode off, capacity
                                         and client tokens cleared.

Every /_circlebot/ answer carries the header X-Circlebot-Launcher:
moto_patched so a client can tell it is not talking to plain moto.
"""

import datetime
import json
import sys
import threading

from werkzeug.wrappers import Request, Response

import moto.server as moto_server_module
from moto.core.utils import utcnow as _utcnow
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models import amis as ami_models
from moto.ec2.models import instances as instance_models
from moto.ec2.models import subnets as subnet_models
from moto.ec2.responses import amis as ami_responses
from moto.ec2.models import ec2_backends
from moto.ec2.models import elastic_block_store as ebs_models
from moto.ec2.responses import elastic_block_store as ebs_responses

LAUNCHER_HEADER = ("X-Circlebot-Launcher", "moto_patched")
STATES = ("pending", "completed", "error")

_lock = threading.RLock()
_auto = {"after": 0}
_capacity = {"unavailable": set()}
_images = {"pending": False}
_tokens = {}


# --- model patches -----------------------------------------------------------

_orig_create_snapshot = ebs_models.EBSBackend.create_snapshot


def _create_snapshot(self, *args, **kwargs):
    snapshot = _orig_create_snapshot(self, *args, **kwargs)
    from_ami = kwargs.get("from_ami", args[3] if len(args) > 3 else None)
    if from_ami is None:
        with _lock:
            snapshot.status = "pending"
            snapshot._circlebot_progress = "0%"
            snapshot._circlebot_describes = 0
    return snapshot


ebs_models.EBSBackend.create_snapshot = _create_snapshot


def _progress(self):
    return getattr(self, "_circlebot_progress", "100%")


ebs_models.Snapshot.progress = property(_progress)


# CreateSnapshots answers SnapshotInfo, whose State is serialized as "state"
# (Snapshot's is "status"); plain moto finds no such attribute and leaves State
# out of the answer.
def _get_state(self):
    return self.status


def _put_state(self, value):
    self.status = value


ebs_models.Snapshot.state = property(_get_state, _put_state)


def _set_state(snapshot, state, progress=None):
    snapshot.status = state
    if progress is None and state == "completed":
        progress = "100%"
    if progress is not None:
        snapshot._circlebot_progress = progress
    if state == "error":
        snapshot.state_message = "snapshot set to error by the circlebot test launcher"
    elif hasattr(snapshot, "state_message"):
        del snapshot.state_message
    snapshot._circlebot_describes = 0


_orig_describe_snapshots = ebs_responses.ElasticBlockStore.describe_snapshots


def _describe_snapshots(self):
    with _lock:
        after = _auto["after"]
        if after > 0:
            # Those already returned N times by earlier calls complete now.
            for snapshot in list(self.ec2_backend.snapshots.values()):
                if (
                    snapshot.status == "pending"
                    and getattr(snapshot, "_circlebot_describes", 0) >= after
                ):
                    _set_state(snapshot, "completed")
    result = _orig_describe_snapshots(self)
    if after > 0:
        with _lock:
            for snapshot in result.result.get("Snapshots", []):
                if snapshot.status == "pending":
                    snapshot._circlebot_describes = (
                        getattr(snapshot, "_circlebot_describes", 0) + 1
                    )
    return result


ebs_responses.ElasticBlockStore.describe_snapshots = _describe_snapshots


# --- restore patches ---------------------------------------------------------

_orig_request_ip = subnet_models.Subnet.request_ip


def _request_ip(self, ip, instance):
    if ip in self._subnet_ips:
        raise EC2ClientError("InvalidIPAddress.InUse", f"Address {ip} is in use.")
    return _orig_request_ip(self, ip, instance)


subnet_models.Subnet.request_ip = _request_ip

_orig_run_instances = instance_models.InstanceBackend.run_instances


def _run_instances(self, image_id, count, user_data, security_group_names, **kwargs):
    itype = kwargs.get("instance_type") or "m1.small"
    with _lock:
        if itype in _capacity["unavailable"]:
            raise EC2ClientError(
                "InsufficientInstanceCapacity",
                f"We currently do not have sufficient {itype} capacity in the Availability Zone you requested.",
            )
        token = kwargs.get("client_token")
        key = (self.account_id, self.region_name, token)
        if token and token != "ABCDE" and key in _tokens:
            return _tokens[key]
    ami = self.amis.get(image_id) if hasattr(self, "amis") else None
    bdm = getattr(ami, "_circlebot_bdm", None)
    if bdm and "block_device_mappings" not in kwargs:
        kwargs["block_device_mappings"] = [
            {"DeviceName": m["DeviceName"], "Ebs": dict(m["Ebs"])} for m in bdm
        ]
    reservation = _orig_run_instances(self, image_id, count, user_data, security_group_names, **kwargs)
    for inst in reservation.instances:
        for nic in inst.nics.values():
            if nic.device_index == 0 and not kwargs.get("nics"):
                nic.delete_on_termination = True
    with _lock:
        if token and token != "ABCDE":
            _tokens[key] = reservation
    return reservation


instance_models.InstanceBackend.run_instances = _run_instances


# --- dry runs ----------------------------------------------------------------
# moto 5.2.1 answers a RunInstances dry run with DryRunOperation having
# looked only at the instance profile. AWS validates the request first:
# the image, subnet, security groups and key pair must exist, the type
# must be one AWS knows and of the image's architecture, and a resource
# takes at most 50 tags. Only then does it answer DryRunOperation.

from moto.ec2.exceptions import (  # noqa: E402
    InvalidAMIIdError,
    InvalidKeyPairNameError,
    InvalidSecurityGroupNotFoundError,
)
from moto.ec2.models.instance_types import INSTANCE_TYPES  # noqa: E402
from moto.ec2.responses import instances as instance_responses  # noqa: E402

_orig_run_instances_response = instance_responses.InstanceResponse.run_instances


def _dry_run_instances(self):
    if not self._get_param("DryRun", False):
        return _orig_run_instances_response(self)
    backend = self.ec2_backend
    image_id = self._get_param("ImageId")
    images = backend.describe_images(ami_ids=[image_id]) if image_id else []
    if not images:
        raise InvalidAMIIdError(image_id or "")
    subnet = self._get_param("SubnetId")
    if subnet:
        backend.get_subnet(subnet)
    for gid in self._get_param("SecurityGroupIds", []):
        if backend.get_security_group_from_id(gid) is None:
            raise InvalidSecurityGroupNotFoundError(gid)
    key = self._get_param("KeyName")
    if key and not any(k.key_name == key for k in backend.key_pairs.values()):
        raise InvalidKeyPairNameError(key)
    itype = self._get_param("InstanceType", "m1.small")
    info = INSTANCE_TYPES.get(itype)
    if info is None:
        raise EC2ClientError("InvalidParameterValue", f"Invalid value '{itype}' for InstanceType.")
    arch = getattr(images[0], "architecture", None)
    archs = info.get("ProcessorInfo", {}).get("SupportedArchitectures", [])
    if arch and archs and arch not in archs:
        raise EC2ClientError(
            "InvalidParameterValue",
            f"The architecture '{'/'.join(archs)}' of the specified instance type does not match the architecture '{arch}' of the specified AMI. Specify an instance type and an AMI that have matching architectures, and try again.",
        )
    # Whether AWS's dry run checks that the private IP asked for is free
    # is not documented: held to the stricter reading, so the bot must
    # cope with either.
    ip = self._get_param("PrivateIpAddress")
    if ip and subnet and ip in backend.get_subnet(subnet)._subnet_ips:
        raise EC2ClientError("InvalidIPAddress.InUse", f"Address {ip} is in use.")
    for nic in self._get_param("NetworkInterfaces", []):
        eni_id = nic.get("NetworkInterfaceId")
        if eni_id:
            eni = backend.get_network_interface(eni_id)
            if getattr(eni, "instance", None) is not None:
                raise EC2ClientError("InvalidNetworkInterface.InUse", f"Interface: [{eni_id}] in use.")
    for spec in self._get_param("TagSpecifications", []):
        if len(spec.get("Tags", [])) > 50:
            raise EC2ClientError("TagLimitExceeded", "The maximum number of tags that can be assigned to a resource is 50.")
    return _orig_run_instances_response(self)


instance_responses.InstanceResponse.run_instances = _dry_run_instances


def _no_capacity(itype):
    return EC2ClientError(
        "InsufficientInstanceCapacity",
        f"We currently do not have sufficient {itype} capacity in the Availability Zone you requested.",
    )


_orig_start_instances = instance_models.InstanceBackend.start_instances


def _start_instances(self, instance_ids):
    # AWS refuses the whole call when a stopped instance's type has no
    # capacity in its zone; nothing starts.
    with _lock:
        unavailable = set(_capacity["unavailable"])
    for inst in self.get_multi_instances_by_id(instance_ids):
        if inst._state.name == "stopped" and inst.instance_type in unavailable:
            raise _no_capacity(inst.instance_type)
    return _orig_start_instances(self, instance_ids)


instance_models.InstanceBackend.start_instances = _start_instances

_orig_modify_instance_attribute = instance_models.InstanceBackend.modify_instance_attribute


def _modify_instance_attribute(self, instance_id, key, value):
    if key == "instance_type":
        from moto.ec2.models.instance_types import INSTANCE_TYPES

        inst = self.get_instance(instance_id)
        if inst._state.name != "stopped":
            raise EC2ClientError(
                "IncorrectInstanceState",
                f"The instance '{instance_id}' is not in the 'stopped' state.",
            )
        if value not in INSTANCE_TYPES:
            raise EC2ClientError(
                "InvalidParameterValue",
                f"Value ({value}) for parameter instanceType is invalid.",
            )
    return _orig_modify_instance_attribute(self, instance_id, key, value)


instance_models.InstanceBackend.modify_instance_attribute = _modify_instance_attribute

_orig_terminate = instance_models.Instance.terminate


def _terminate(self):
    was = self._state.name
    if was == "terminated":
        # AWS answers a repeated TerminateInstances with the same state;
        # moto would try to delete the already deleted interface again.
        import copy

        return copy.copy(self._state)
    nics = [n for n in self.nics.values() if n.delete_on_termination]
    result = _orig_terminate(self)
    if was != "terminated":
        for nic in nics:
            # moto's delete leaves the ENI attached in the instance's view;
            # the IP is what matters: free it, as AWS does.
            for ip in nic.private_ip_addresses:
                nic.subnet.del_subnet_ip(ip["PrivateIpAddress"])
    return result


instance_models.Instance.terminate = _terminate

# Network interfaces, as AWS keeps them (moto 5.2.1 does not):
#   - TerminateInstances detaches the interfaces it does not delete
#     (DeleteOnTermination false: made on their own and attached): they
#     become "available" with their addresses.
#   - AssignPrivateIpAddresses of an address another interface holds,
#     without AllowReassignment, is refused.
#   - AttachNetworkInterface at a device index the instance already uses
#     is refused.
from moto.ec2.models import elastic_network_interfaces as eni_models
from moto.ec2.responses import elastic_network_interfaces as eni_responses

_orig_terminate_nics = instance_models.Instance.terminate


def _terminate_keeps_interfaces(self):
    kept = []
    if self._state.name != "terminated":
        kept = [n for n in self.nics.values() if not n.delete_on_termination]
    result = _orig_terminate_nics(self)
    for nic in kept:
        if nic.instance is not self:
            continue
        if nic.device_index == 0:
            # moto reads the instance's IP and subnet from nics[0]: keep it
            # there, detached.
            nic.instance = None
            nic.attachment_id = None
            nic.attach_time = None
            nic.status = "available"
        else:
            self.detach_eni(nic)
    return result


instance_models.Instance.terminate = _terminate_keeps_interfaces

_orig_assign_ips = eni_responses.ElasticNetworkInterfaces.assign_private_ip_addresses


def _assign_ips(self):
    if str(self._get_param("AllowReassignment")).lower() != "true":
        eni_id = self._get_param("NetworkInterfaceId")
        wanted = set(self._get_param("PrivateIpAddresses", []) or [])
        for other in self.ec2_backend.enis.values():
            if other.id == eni_id:
                continue
            for a in other.private_ip_addresses:
                if a.get("PrivateIpAddress") in wanted:
                    raise EC2ClientError(
                        "InvalidParameterValue",
                        f"Address {a.get('PrivateIpAddress')} is in use by {other.id}.",
                    )
    return _orig_assign_ips(self)


eni_responses.ElasticNetworkInterfaces.assign_private_ip_addresses = _assign_ips

_orig_attach_eni = eni_models.NetworkInterfaceBackend.attach_network_interface


def _attach_eni(self, eni_id, instance_id, device_index):
    inst = self.get_instance(instance_id)
    if int(device_index) in inst.nics:
        raise EC2ClientError(
            "InvalidParameterValue",
            f"Instance '{instance_id}' already has an interface attached at device index '{device_index}'.",
        )
    return _orig_attach_eni(self, eni_id, instance_id, device_index)


eni_models.NetworkInterfaceBackend.attach_network_interface = _attach_eni


def _register_image(self):
    name = self._get_param("Name")
    description = self._get_param("Description", "")
    self.error_on_dryrun()
    image = self.ec2_backend.register_image(name, description)
    root = self._get_param("RootDeviceName")
    arch = self._get_param("Architecture")
    if root:
        image.root_device_name = root
    if arch:
        image.architecture = arch
    image.root_device_type = "ebs"
    image.virtualization_type = self._get_param("VirtualizationType") or "hvm"
    bdm = []
    for m in self._get_param("BlockDeviceMappings", []) or []:
        ebs = m.get("Ebs") or {}
        snap_id = ebs.get("SnapshotId")
        size = ebs.get("VolumeSize")
        if snap_id and not size:
            size = self.ec2_backend.get_snapshot(snap_id).volume.size
        bdm.append({"DeviceName": m.get("DeviceName"), "Ebs": {
            "SnapshotId": snap_id, "VolumeSize": size,
            "DeleteOnTermination": str(ebs.get("DeleteOnTermination", True)).lower() == "true",
            "VolumeType": ebs.get("VolumeType") or "gp3",
        }})
    if bdm:
        image._circlebot_bdm = bdm
    tags = self._parse_tag_specification().get("image", {})
    if tags:
        image.add_tags(tags)
    with _lock:
        if _images["pending"]:
            image.state = "pending"
            image._circlebot_pending = True
    return ami_responses.ActionResult({"ImageId": image.id})


ami_responses.AmisResponse.register_image = _register_image


def _create_image(self):
    name = self._get_param("Name")
    description = self._get_param("Description", "")
    instance_id = self._get_param("InstanceId")
    self.error_on_dryrun()
    backend = self.ec2_backend
    inst = backend.get_instance(instance_id)
    if inst._state.name not in ("running", "stopped"):
        raise EC2ClientError(
            "IncorrectInstanceState",
            f"The instance '{instance_id}' is not in a state from which it can be imaged.",
        )
    for other in list(backend.amis.values()):
        if other.name == name and other.owner_id == backend.account_id and other.state != "deregistered":
            raise EC2ClientError("InvalidAMIName.Duplicate", f"AMI name {name} is already in use by AMI {other.id}")
    specs = {}
    for spec in self._get_param("TagSpecifications", []) or []:
        rt = spec.get("ResourceType")
        if rt not in ("image", "snapshot"):
            raise EC2ClientError("InvalidParameterValue", f"'{rt}' is not a valid taggable resource type for this operation.")
        specs.setdefault(rt, {}).update({t["Key"]: t["Value"] for t in spec.get("Tags", []) or []})
    image = backend.create_image(instance_id, name, description, tag_specifications=[])
    image.root_device_name = inst.root_device_name
    image.root_device_type = "ebs"
    bdm = []
    for dev, block in sorted(inst.block_device_mapping.items()):
        vol = backend.get_volume(block.volume_id)
        snap = backend.create_snapshot(vol.id, f"Created by CreateImage({instance_id}) for {image.id}", from_ami=image.id)
        if specs.get("snapshot"):
            snap.add_tags(specs["snapshot"])
        bdm.append({"DeviceName": dev, "Ebs": {
            "SnapshotId": snap.id, "VolumeSize": vol.size,
            "DeleteOnTermination": bool(block.delete_on_termination),
            "VolumeType": getattr(vol, "volume_type", None) or "gp3",
        }})
    if bdm:
        image._circlebot_bdm = bdm
    if specs.get("image"):
        image.add_tags(specs["image"])
    with _lock:
        if _images["pending"]:
            image.state = "pending"
            image._circlebot_pending = True
    return ami_responses.ActionResult({"ImageId": image.id})


ami_responses.AmisResponse.create_image = _create_image

_orig_ami_bdm = ami_models.Ami.block_device_mappings


def _ami_bdm(self):
    bdm = getattr(self, "_circlebot_bdm", None)
    if bdm:
        return [{"DeviceName": m["DeviceName"], "Ebs": dict(m["Ebs"])} for m in bdm]
    return _orig_ami_bdm.fget(self)


ami_models.Ami.block_device_mappings = property(_ami_bdm)


# --- CloudFormation patches --------------------------------------------------
#
# Applied when moto first imports moto.cloudformation.parsing (the first
# CloudFormation request): that module imports every service's models, which
# costs seconds of CPU, and most tests never use CloudFormation.

import importlib.abc
import importlib.machinery


def _patch_cloudformation(cfn_parsing):
    from moto.cloudformation.exceptions import ValidationError as CfnValidationError
    from moto.core.common_models import CloudFormationModel
    from moto.cloudwatch.models import cloudwatch_backends
    from moto.dynamodb.models import dynamodb_backends
    from moto.dynamodb.models import table as ddb_table_models
    from moto.iam import models as iam_models

    _orig_clean_json = cfn_parsing.clean_json


    def _clean_json(resource_json, resources_map):
        value = _orig_clean_json(resource_json, resources_map)
        if isinstance(resource_json, list) and isinstance(value, list):
            return [v for v in value if v is not None]
        return value


    cfn_parsing.clean_json = _clean_json

    _orig_role_create = iam_models.Role.create_from_cloudformation_json.__func__


    def _role_create(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
        for policy in cloudformation_json.get("Properties", {}).get("Policies", []) or []:
            if not isinstance(policy.get("PolicyDocument"), str):
                policy["PolicyDocument"] = json.dumps(policy["PolicyDocument"])
        return _orig_role_create(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)


    iam_models.Role.create_from_cloudformation_json = classmethod(_role_create)

    _orig_table_create = ddb_table_models.Table.create_from_cloudformation_json.__func__


    def _table_create(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
        table = _orig_table_create(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)
        spec = cloudformation_json.get("Properties", {}).get("PointInTimeRecoverySpecification")
        if spec and str(spec.get("PointInTimeRecoveryEnabled")).lower() == "true":
            dynamodb_backends[account_id][region_name].update_continuous_backups(
                table.name, {"PointInTimeRecoveryEnabled": True}
            )
        return table


    ddb_table_models.Table.create_from_cloudformation_json = classmethod(_table_create)


    class _CfnAlarm(CloudFormationModel):
        """AWS::CloudWatch::Alarm over moto's own PutMetricAlarm."""

        # moto files its models by the module's second name (moto.<service>).
        __module__ = "moto.cloudwatch.circlebot_patched"

        def __init__(self, alarm):
            self.alarm = alarm

        @property
        def physical_resource_id(self):
            return self.alarm.name

        @staticmethod
        def cloudformation_name_type():
            return "AlarmName"

        @staticmethod
        def cloudformation_type():
            return "AWS::CloudWatch::Alarm"

        @classmethod
        def create_from_cloudformation_json(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
            p = cloudformation_json["Properties"]
            alarm = cloudwatch_backends[account_id][region_name].put_metric_alarm(
                name=resource_name,
                namespace=p.get("Namespace"),
                metric_name=p.get("MetricName"),
                comparison_operator=p.get("ComparisonOperator"),
                evaluation_periods=int(p.get("EvaluationPeriods")),
                period=int(p.get("Period")),
                threshold=float(p.get("Threshold")),
                statistic=p.get("Statistic"),
                description=p.get("AlarmDescription"),
                dimensions=[{"Name": d["Name"], "Value": d["Value"]} for d in p.get("Dimensions", [])],
                alarm_actions=p.get("AlarmActions", []),
                ok_actions=p.get("OKActions", []),
                datapoints_to_alarm=int(p["DatapointsToAlarm"]) if "DatapointsToAlarm" in p else None,
                treat_missing_data=p.get("TreatMissingData"),
            )
            return cls(alarm)

        @classmethod
        def delete_from_cloudformation_json(cls, resource_name, cloudformation_json, account_id, region_name):
            cloudwatch_backends[account_id][region_name].delete_alarms([resource_name])


    cfn_parsing.get_model_list.cache_clear()
    cfn_parsing.get_model_map.cache_clear()
    cfn_parsing.get_name_type_map.cache_clear()

    _orig_resource_class = cfn_parsing.resource_class_from_type


    def _resource_class_from_type(resource_type):
        cls = _orig_resource_class(resource_type)
        if cls is None and resource_type not in cfn_parsing.NULL_MODELS:
            raise CfnValidationError(message=f"moto (patched) cannot create {resource_type}: the test could not check it")
        return cls


    cfn_parsing.resource_class_from_type = _resource_class_from_type

    # IAM's quotas on managed policies, which a stack's
    # AWS::IAM::ManagedPolicy meets (moto 5.2.1 has them in
    # GetAccountSummary only): a policy document is at most 6,144
    # characters, white space not counted, and a role has at most 10
    # managed policies attached (the default quota).
    from moto.iam.exceptions import LimitExceededException as IamLimitExceeded

    policy_size_quota, policies_per_role_quota = 6144, 10

    _orig_create_policy = iam_models.IAMBackend.create_policy


    def _create_policy(self, description, path, policy_document, policy_name, tags):
        size = len("".join(str(policy_document).split()))
        if size > policy_size_quota:
            raise IamLimitExceeded(f"Cannot exceed quota for PolicySize: {policy_size_quota}")
        return _orig_create_policy(self, description, path, policy_document, policy_name, tags)


    iam_models.IAMBackend.create_policy = _create_policy

    _orig_attach_role_policy = iam_models.IAMBackend.attach_role_policy


    def _attach_role_policy(self, policy_arn, role_name):
        role = self.get_role(role_name)
        if policy_arn not in role.managed_policies and len(role.managed_policies) >= policies_per_role_quota:
            raise IamLimitExceeded(f"Cannot exceed quota for PoliciesPerRole: {policies_per_role_quota}")
        return _orig_attach_role_policy(self, policy_arn, role_name)


    iam_models.IAMBackend.attach_role_policy = _attach_role_policy


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Runs patch(module) right after the named module is first executed."""

    def __init__(self, name, patch):
        self.name, self.patch, self.done = name, patch, False

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name or self.done:
            return None
        self.done = True
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            self.patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


sys.meta_path.insert(0, _PatchOnImport("moto.cloudformation.parsing", _patch_cloudformation))


# --- control API -------------------------------------------------------------


def _all_snapshots():
    # dict.items avoids BackendDict's lazy creation of every account/region.
    for account_id, regions in list(dict.items(ec2_backends)):
        for region, backend in list(dict.items(regions)):
            for snapshot in list(backend.snapshots.values()):
                yield account_id, region, snapshot


def _json(status, body):
    resp = Response(
        json.dumps(body, sort_keys=True) + "\n",
        status=status,
        mimetype="application/json",
    )
    resp.headers[LAUNCHER_HEADER[0]] = LAUNCHER_HEADER[1]
    return resp


def _read_json(request):
    try:
        body = json.loads(request.get_data(as_text=True) or "{}")
    except ValueError as exc:
        raise _BadRequest(f"body is not JSON: {exc}")
    if not isinstance(body, dict):
        raise _BadRequest("body must be a JSON object")
    return body


class _BadRequest(Exception):
    pass


def _list_snapshots():
    with _lock:
        out = [
            {
                "snapshot_id": s.id,
                "state": s.status,
                "progress": s.progress,
                "volume_id": s.volume.id if s.volume is not None else "",
                "account_id": account_id,
                "region": region,
                "describes": getattr(s, "_circlebot_describes", 0),
            }
            for account_id, region, s in _all_snapshots()
        ]
        return {"complete_after_describes": _auto["after"], "snapshots": out}


def _control(request):
    path = request.path.rstrip("/")
    method = request.method
    if path == "/_circlebot/snapshots" and method == "GET":
        return _json(200, _list_snapshots())
    if path == "/_circlebot/snapshots" and method == "POST":
        body = _read_json(request)
        snapshot_id = body.get("snapshot_id")
        state = body.get("state")
        progress = body.get("progress") or None
        if not isinstance(snapshot_id, str) or not snapshot_id:
            raise _BadRequest("snapshot_id is required")
        if state not in STATES:
            raise _BadRequest(f"state must be one of {', '.join(STATES)}, got {state!r}")
        if progress is not None and not isinstance(progress, str):
            raise _BadRequest("progress must be a string such as '45%'")
        ago = body.get("started_ago")
        if ago is not None and (not isinstance(ago, (int, float)) or ago < 0):
            raise _BadRequest("started_ago must be a number of seconds >= 0")
        with _lock:
            found = [s for _, _, s in _all_snapshots() if s.id == snapshot_id]
            if not found:
                return _json(404, {"error": f"snapshot {snapshot_id} not found"})
            for s in found:
                _set_state(s, state, progress)
                if ago is not None:
                    s.start_time = _utcnow() - datetime.timedelta(seconds=ago)
            return _json(
                200,
                {"snapshot_id": snapshot_id, "state": found[0].status, "progress": found[0].progress},
            )
    if path == "/_circlebot/snapshots/auto" and method == "POST":
        body = _read_json(request)
        after = body.get("complete_after_describes")
        if not isinstance(after, int) or isinstance(after, bool) or after < 0:
            raise _BadRequest("complete_after_describes must be an integer >= 0")
        with _lock:
            _auto["after"] = after
            for _, _, s in _all_snapshots():
                s._circlebot_describes = 0
        return _json(200, {"complete_after_describes": after})
    if path == "/_circlebot/images" and method == "POST":
        body = _read_json(request)
        pending = body.get("pending")
        if not isinstance(pending, bool):
            raise _BadRequest("pending must be true or false")
        with _lock:
            _images["pending"] = pending
            if not pending:
                # Images held pending become available now.
                for account_id, regions in list(dict.items(ec2_backends)):
                    for region, backend in list(dict.items(regions)):
                        for ami in list(backend.amis.values()):
                            if getattr(ami, "_circlebot_pending", False):
                                ami.state = "available"
                                ami._circlebot_pending = False
        return _json(200, {"pending": pending})
    if path == "/_circlebot/capacity" and method == "POST":
        body = _read_json(request)
        types = body.get("unavailable")
        if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
            raise _BadRequest("unavailable must be a list of instance types")
        with _lock:
            _capacity["unavailable"] = set(types)
        return _json(200, {"unavailable": sorted(types)})
    return _json(404, {"error": f"no control route {method} {request.path}"})


class CirclebotApp:
    """WSGI middleware in front of moto's DomainDispatcherApplication."""

    def __init__(self, app):
        self.app = app

    @property
    def debug(self):
        return getattr(self.app, "debug", False)

    @debug.setter
    def debug(self, value):
        self.app.debug = value

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/_circlebot" or path.startswith("/_circlebot/"):
            request = Request(environ)
            try:
                response = _control(request)
            except _BadRequest as exc:
                response = _json(400, {"error": str(exc)})
            except Exception as exc:  # keep the server up; show the cause
                response = _json(500, {"error": f"{type(exc).__name__}: {exc}"})
            return response(environ, start_response)
        if path.rstrip("/") == "/moto-api/reset" and environ.get("REQUEST_METHOD") == "POST":
            with _lock:
                _auto["after"] = 0
                _capacity["unavailable"] = set()
                _images["pending"] = False
                _tokens.clear()
        return self.app(environ, start_response)


_OrigDispatcher = moto_server_module.DomainDispatcherApplication


def _dispatcher(create_app):
    return CirclebotApp(_OrigDispatcher(create_app))


moto_server_module.DomainDispatcherApplication = _dispatcher

# Block-device and boot settings as AWS keeps them: a module of its own in
# this directory (see its docstring).
import circlebot_volumes  # noqa: E402,F401

if __name__ == "__main__":
    moto_server_module.main(sys.argv[1:])
