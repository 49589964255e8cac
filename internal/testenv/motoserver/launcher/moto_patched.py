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
    - Instance types named by POST /_circlebot/capacity answer
      InsufficientInstanceCapacity, in RunInstances and in StartInstances
      of a stopped instance of that type.

  * Instance types (what AWS refuses and moto 5.2.1 accepts):
    - ModifyInstanceAttribute InstanceType on an instance that is not
      stopped answers IncorrectInstanceState, and a type moto does not
      know answers InvalidParameterValue.

Control API on the same HTTP server (paths moto does not use):
  POST /_circlebot/snapshots
       {"snapshot_id": "snap-...", "state": "completed|pending|error",
        "progress": "45%"}              progress optional: completed -> 100%,
                                         otherwise the current value is kept
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

import json
import sys
import threading

from werkzeug.wrappers import Request, Response

import moto.server as moto_server_module
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

_orig_ami_bdm = ami_models.Ami.block_device_mappings


def _ami_bdm(self):
    bdm = getattr(self, "_circlebot_bdm", None)
    if bdm:
        return [{"DeviceName": m["DeviceName"], "Ebs": dict(m["Ebs"])} for m in bdm]
    return _orig_ami_bdm.fget(self)


ami_models.Ami.block_device_mappings = property(_ami_bdm)


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
        with _lock:
            found = [s for _, _, s in _all_snapshots() if s.id == snapshot_id]
            if not found:
                return _json(404, {"error": f"snapshot {snapshot_id} not found"})
            for s in found:
                _set_state(s, state, progress)
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

if __name__ == "__main__":
    moto_server_module.main(sys.argv[1:])
