"""moto_patched with an AWS timing model: state changes take time.

Plain moto (and moto_patched) changes every state at once: an instance is
"running" the moment RunInstances answers, "stopped" the moment
StopInstances does. On AWS those are the minutes an on-call engineer waits.
This launcher imports moto_patched (its patches and control API included)
and adds durations, read from $CIRCLEBOT_TIMING as JSON of seconds (already
scaled by the Go side, internal/testenv/motoserver/timing.go, which holds
the table and its sources):

  launch            RunInstances: pending -> running
  start             StartInstances: pending -> running
  stop              StopInstances: stopping -> stopped
  terminate         TerminateInstances: shutting-down -> terminated
  ip_release        after terminated: the primary interface (and its
                    private IP) is deleted only then
  status_checks     after running: both status checks "initializing" -> "ok"
  agent             after running: the SSM agent answers (GET below)
  reboot_agent      RebootInstances: the SSM agent is away this long
  snapshot_base     CreateSnapshot(s): pending this long at least ...
  snapshot_per_gib  ... plus this per GiB changed, with
  snapshot_changed  the changed share of the volume (0..1); Progress
                    climbs with the elapsed share
  image             RegisterImage: pending -> available
  volume_create     CreateVolume: creating -> available
  volume_attach     AttachVolume: attaching -> attached
  volume_detach     DetachVolume: the volume stays in-use, its attachment
                    "detaching", this long

Stricter than moto, as AWS is while a change is under way:
  * StartInstances of a stopping instance answers IncorrectInstanceState.
  * AttachVolume of a volume that is creating, detaching or in use answers
    IncorrectState.

Every change happens lazily: due changes are applied when a request
arrives, which is when a client could see them.

Control API (besides moto_patched's):
  GET /_circlebot/timing   {"durations": {...},
                            "instances": {id: {"state", "agent_online"}}}
"""

import json
import os
import sys
import threading
import time

import moto_patched  # noqa: F401  (its patches and control API first)
from moto_patched import _json, moto_server_module
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models import elastic_block_store as ebs_models
from moto.ec2.models import instances as instance_models
from moto.ec2.responses import amis as ami_responses

D = {k: float(v) for k, v in json.loads(os.environ.get("CIRCLEBOT_TIMING") or "{}").items()}
_lock = threading.RLock()
_events = []  # [due, seq, fn]: applied in order once due
_seq = [0]
_instances = {}  # id -> instance, for the control API
INF = float("inf")
# Set while RunInstances makes and attaches the volumes of its mappings:
# those are part of the launch's own time, not API calls of their own.
_inside = threading.local()


def _d(key):
    return D.get(key, 0.0)


def _now():
    return time.monotonic()


def _at(due, fn):
    with _lock:
        _seq[0] += 1
        _events.append([due, _seq[0], fn])


def _tick():
    with _lock:
        now = _now()
        due = sorted((e for e in _events if e[0] <= now), key=lambda e: (e[0], e[1]))
        if not due:
            return
        _events[:] = [e for e in _events if e[0] > now]
        for _, _, fn in due:
            fn()


def _set(inst, name, code):
    inst._state.name = name
    inst._state.code = code


def _transition(inst, name, code, final_name, final_code, seconds, after=None):
    """Show name/code now and final_name/final_code after seconds; a newer
    transition of the same instance wins over this one."""
    with _lock:
        gen = getattr(inst, "_circ_gen", 0) + 1
        inst._circ_gen = gen
        _instances[inst.id] = inst
        _set(inst, name, code)

        def done():
            if inst._circ_gen == gen:
                _set(inst, final_name, final_code)
                if after:
                    after()

        _at(_now() + seconds, done)


def _came_up(inst):
    now = _now()
    inst._circ_checks_at = now + _d("status_checks")
    inst._circ_agent_at = now + _d("agent")


# --- instances ---------------------------------------------------------------

_orig_run = instance_models.InstanceBackend.run_instances


def _run_instances(self, *args, **kwargs):
    _inside.launch = True
    try:
        reservation = _orig_run(self, *args, **kwargs)
    finally:
        _inside.launch = False
    for inst in reservation.instances:
        if getattr(inst, "_circ_gen", 0) == 0 and inst._state.name == "running":
            inst._circ_agent_at = INF
            _transition(inst, "pending", 0, "running", 16, _d("launch"), lambda i=inst: _came_up(i))
    return reservation


instance_models.InstanceBackend.run_instances = _run_instances

_orig_start = instance_models.InstanceBackend.start_instances


def _start_instances(self, instance_ids):
    for inst in self.get_multi_instances_by_id(instance_ids):
        if inst._state.name == "stopping":
            raise EC2ClientError(
                "IncorrectInstanceState",
                f"The instance '{inst.id}' is not in a state from which it can be started.",
            )
    was = {i.id: i._state.name for i in self.get_multi_instances_by_id(instance_ids)}
    result = _orig_start(self, instance_ids)
    for inst, _ in result:
        if was.get(inst.id) == "stopped":
            inst._circ_agent_at = INF
            _transition(inst, "pending", 0, "running", 16, _d("start"), lambda i=inst: _came_up(i))
    return result


instance_models.InstanceBackend.start_instances = _start_instances

_orig_stop = instance_models.InstanceBackend.stop_instances


def _stop_instances(self, instance_ids):
    was = {i.id: i._state.name for i in self.get_multi_instances_by_id(instance_ids)}
    result = _orig_stop(self, instance_ids)
    for inst, _ in result:
        if was.get(inst.id) in ("pending", "running"):
            inst._circ_agent_at = INF
            _transition(inst, "stopping", 64, "stopped", 80, _d("stop"))
        elif was.get(inst.id) == "stopping":
            _set(inst, "stopping", 64)  # still on its way: the first stop's clock runs
    return result


instance_models.InstanceBackend.stop_instances = _stop_instances

_orig_reboot = instance_models.InstanceBackend.reboot_instances


def _reboot_instances(self, instance_ids):
    result = _orig_reboot(self, instance_ids)
    with _lock:
        for inst in self.get_multi_instances_by_id(instance_ids):
            _instances[inst.id] = inst
            inst._circ_agent_at = _now() + _d("reboot_agent")
    return result


instance_models.InstanceBackend.reboot_instances = _reboot_instances

_orig_terminate = instance_models.Instance.terminate


def _terminate(self):
    was = self._state.name
    if was in ("terminated", "shutting-down"):
        result = _orig_terminate(self) if was == "terminated" else None
        if was == "shutting-down":
            import copy

            return copy.copy(self._state)
        return result
    # The interfaces made at launch go with the instance, but only once it
    # is terminated and AWS has released them: until then the private IP is
    # still taken.
    nics = [n for n in self.nics.values() if n.delete_on_termination]
    for n in nics:
        n.delete_on_termination = False
    try:
        result = _orig_terminate(self)
    finally:
        for n in nics:
            n.delete_on_termination = True
    self._circ_agent_at = INF

    def release():
        def free():
            for n in nics:
                try:
                    n.delete()
                except Exception:  # already gone
                    pass

        _at(_now() + _d("ip_release"), free)

    _transition(self, "shutting-down", 32, "terminated", 48, _d("terminate"), release)
    return result


instance_models.Instance.terminate = _terminate


def _status(self, orig):
    if self.state_code == 16 and _now() < getattr(self, "_circ_checks_at", 0):
        return {"Details": [{"Name": "reachability", "Status": "initializing"}], "Status": "initializing"}
    return orig.fget(self)


_orig_instance_status = instance_models.Instance.instance_status
_orig_system_status = instance_models.Instance.system_status
instance_models.Instance.instance_status = property(lambda self: _status(self, _orig_instance_status))
instance_models.Instance.system_status = property(lambda self: _status(self, _orig_system_status))


def agent_online(inst):
    return inst._state.name == "running" and _now() >= getattr(inst, "_circ_agent_at", 0)


# --- snapshots ---------------------------------------------------------------

_orig_create_snapshot = ebs_models.EBSBackend.create_snapshot


def _create_snapshot(self, *args, **kwargs):
    snapshot = _orig_create_snapshot(self, *args, **kwargs)
    if snapshot.status == "pending":
        size = snapshot.volume.size if snapshot.volume is not None else 0
        took = _d("snapshot_base") + size * _d("snapshot_changed") * _d("snapshot_per_gib")
        start = _now()
        snapshot._circ_window = (start, start + took)

        def done():
            if snapshot.status == "pending":
                moto_patched._set_state(snapshot, "completed")

        _at(start + took, done)
    return snapshot


ebs_models.EBSBackend.create_snapshot = _create_snapshot

_orig_progress = ebs_models.Snapshot.progress


def _progress(self):
    w = getattr(self, "_circ_window", None)
    if w and self.status == "pending":
        share = (_now() - w[0]) / max(w[1] - w[0], 1e-9)
        return f"{min(99, int(share * 100))}%"
    return _orig_progress.fget(self)


ebs_models.Snapshot.progress = property(_progress)

# --- images ------------------------------------------------------------------

_orig_register = ami_responses.AmisResponse.register_image


def _register_image(self):
    result = _orig_register(self)
    image = self.ec2_backend.amis.get(result.result["ImageId"]) if hasattr(result, "result") else None
    if image is not None and image.state == "available":
        image.state = "pending"

        def done():
            if image.state == "pending":
                image.state = "available"

        _at(_now() + _d("image"), done)
    return result


ami_responses.AmisResponse.register_image = _register_image

# --- volumes -----------------------------------------------------------------

_orig_create_volume = ebs_models.EBSBackend.create_volume


def _create_volume(self, *args, **kwargs):
    volume = _orig_create_volume(self, *args, **kwargs)
    if not getattr(_inside, "launch", False):
        volume._circ_ready_at = _now() + _d("volume_create")
    return volume


ebs_models.EBSBackend.create_volume = _create_volume

_orig_volume_status = ebs_models.Volume.status
_orig_attachments = ebs_models.Volume.attachments


def _detaching(vol):
    d = getattr(vol, "_circ_detaching", None)
    if d and _now() < d[1]:
        return d[0]
    return None


def _volume_status(self):
    if _now() < getattr(self, "_circ_ready_at", 0):
        return "creating"
    if _detaching(self) is not None:
        return "in-use"
    return _orig_volume_status.fget(self)


def _volume_attachments(self):
    old = _detaching(self)
    if old is not None:
        return [old]
    return _orig_attachments.fget(self)


ebs_models.Volume.status = property(_volume_status)
ebs_models.Volume.attachments = property(_volume_attachments)

_orig_attach = ebs_models.EBSBackend.attach_volume


def _attach_volume(self, volume_id, instance_id, device_path, delete_on_termination=False):
    if getattr(_inside, "launch", False):
        return _orig_attach(self, volume_id, instance_id, device_path, delete_on_termination)
    volume = self.get_volume(volume_id)
    status = _volume_status(volume)
    if status != "available":
        raise EC2ClientError("IncorrectState", f"vol '{volume_id}' is not 'available'. It is '{status}'.")
    attachment = _orig_attach(self, volume_id, instance_id, device_path, delete_on_termination)
    if attachment is not None:
        attachment.status = "attaching"

        def done():
            if attachment.status == "attaching":
                attachment.status = "attached"

        _at(_now() + _d("volume_attach"), done)
    return attachment


ebs_models.EBSBackend.attach_volume = _attach_volume

_orig_detach = ebs_models.EBSBackend.detach_volume


def _detach_volume(self, volume_id, instance_id, device_path):
    attachment = _orig_detach(self, volume_id, instance_id, device_path)
    attachment.status = "detaching"
    volume = self.get_volume(volume_id)
    volume._circ_detaching = (attachment, _now() + _d("volume_detach"))

    def done():
        attachment.status = "detached"

    _at(volume._circ_detaching[1], done)
    return attachment


ebs_models.EBSBackend.detach_volume = _detach_volume

# --- the request path --------------------------------------------------------


class TimedApp:
    """Applies due changes before every request, and serves GET /_circlebot/timing."""

    def __init__(self, app):
        self.app = app

    @property
    def debug(self):
        return getattr(self.app, "debug", False)

    @debug.setter
    def debug(self, value):
        self.app.debug = value

    def __call__(self, environ, start_response):
        _tick()
        path = environ.get("PATH_INFO", "").rstrip("/")
        if path == "/_circlebot/timing" and environ.get("REQUEST_METHOD") == "GET":
            with _lock:
                body = {
                    "durations": D,
                    "instances": {
                        i: {"state": inst._state.name, "agent_online": agent_online(inst)}
                        for i, inst in _instances.items()
                    },
                }
            return _json(200, body)(environ, start_response)
        if path == "/moto-api/reset" and environ.get("REQUEST_METHOD") == "POST":
            with _lock:
                _events.clear()
                _instances.clear()
        return self.app(environ, start_response)


_Dispatcher = moto_server_module.DomainDispatcherApplication


def _timed_dispatcher(create_app):
    return TimedApp(_Dispatcher(create_app))


moto_server_module.DomainDispatcherApplication = _timed_dispatcher

if __name__ == "__main__":
    moto_server_module.main(sys.argv[1:])
