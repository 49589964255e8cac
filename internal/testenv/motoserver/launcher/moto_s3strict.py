"""moto_server whose S3 multipart uploads answer as S3 does.

moto 5.2.1 is kinder than S3 to multipart uploads. This launcher patches
moto in-process and then runs the launcher named by $CIRCLEBOT_CHAIN_LAUNCHER
(for example moto_patched.py) or, without one, moto_server's own main(), so
it takes exactly the same CLI flags (-H host -p port ...).

Patched behaviour (each as the S3 API reference documents it):
  * ETags of SSE-KMS objects are not MD5s. A part or object encrypted with
    aws:kms (by its upload's header or by the bucket's default encryption)
    gets an ETag of 32 hex digits that is not the MD5 of its data, and a
    multipart object made of such parts an ETag that is not the MD5 of its
    parts' MD5s.
  * UploadPart verifies x-amz-checksum-sha256 (and -sha1, -crc32) against
    the part's data and answers 400 BadDigest on a mismatch; the part is not
    stored.
  * UploadPart into a bucket with Object Lock and a default retention (or
    an upload with Object Lock headers) needs Content-MD5 or an
    x-amz-checksum-* header; without one it answers 400 InvalidRequest.
  * A presigned UploadPart must carry every header its X-Amz-SignedHeaders
    names; a missing one answers 403 SignatureDoesNotMatch. (The signature
    itself is not checked, as moto does not check it.)
  * CompleteMultipartUpload of an upload created with a checksum algorithm
    needs each part's checksum, equal to the one the part was stored with:
    a missing one answers 400 InvalidRequest, a different one 400
    InvalidPart.
"""

import base64
import binascii
import hashlib
import os
import runpy
import sys
from xml.dom import minidom

import moto.server as moto_server_module
from moto.s3 import models as s3_models
from moto.s3 import responses as s3_responses

_ALGOS = {
    "SHA256": lambda b: hashlib.sha256(b).digest(),
    "SHA1": lambda b: hashlib.sha1(b).digest(),
    "CRC32": lambda b: binascii.crc32(b).to_bytes(4, "big"),
}
_CHECKSUM_HEADERS = ("crc32", "crc32c", "crc64nvme", "sha1", "sha256")


def _error(status, code, message):
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        "<RequestId>circlebot-s3strict</RequestId></Error>"
    )
    return status, {"content-type": "application/xml"}, body


def _is_kms(bucket, multipart):
    if multipart is not None and (multipart.sse_encryption or "").startswith("aws:kms"):
        return True
    enc = getattr(bucket, "encryption", None)
    if not enc:
        return False
    try:
        algo = enc["Rule"]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"]
    except (KeyError, TypeError):
        return False
    return str(algo).startswith("aws:kms")


def _opaque_etag():
    # What S3 gives an SSE-KMS object: 32 hex digits, not the data's MD5.
    return hashlib.md5(b"circlebot-kms" + os.urandom(16)).hexdigest()


_orig_upload_part = s3_responses.S3Response.upload_part


def _upload_part(self):
    upload_id = self._get_param("uploadId")
    try:
        bucket = self.backend.get_bucket(self.bucket_name)
    except Exception:
        return _orig_upload_part(self)
    multipart = bucket.multiparts.get(upload_id)
    if multipart is None:
        return _orig_upload_part(self)

    signed = (self.querystring.get("X-Amz-SignedHeaders") or [""])[0]
    for name in filter(None, signed.split(";")):
        if self.headers.get(name) is None:
            return _error(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided. "
                f"Check your key and signing method. (signed header {name} is missing)",
            )

    body = self.body or b""
    has_checksum = self.headers.get("Content-MD5") is not None or any(
        self.headers.get("x-amz-checksum-" + h) is not None for h in _CHECKSUM_HEADERS
    ) or self.headers.get("x-amz-sdk-checksum-algorithm") is not None
    lock_headers = any(
        str(k).lower().startswith("x-amz-object-lock-") for k in multipart.metadata.keys()
    )
    if bucket.object_lock_enabled and (bucket.has_default_lock or lock_headers) and not has_checksum:
        return _error(
            400,
            "InvalidRequest",
            "Content-MD5 OR x-amz-checksum- HTTP header is required for Put Part requests with Object Lock parameters",
        )

    stored = None
    for algo, fn in _ALGOS.items():
        given = self.headers.get("x-amz-checksum-" + algo.lower())
        if given is None:
            continue
        want = base64.b64encode(fn(body)).decode()
        if given != want:
            return _error(
                400,
                "BadDigest",
                f"The {algo} you specified did not match the calculated checksum.",
            )
        stored = (algo, given)

    status, headers, out = _orig_upload_part(self)
    part = multipart.parts.get(self._get_int_param("partNumber"))
    if part is not None:
        if stored is not None:
            part._circlebot_checksum = stored
        if _is_kms(bucket, multipart):
            part._etag = _opaque_etag()
            for k in [k for k in headers if k.lower() == "etag"]:
                del headers[k]
            headers["ETag"] = part.etag
    return status, headers, out


s3_responses.S3Response.upload_part = _upload_part


_orig_key_response_post = s3_responses.S3Response._key_response_post


def _key_response_post(self, request, body, bucket_name, query, key_name):
    if query.get("uploadId") and body:
        err = _check_complete(self, bucket_name, query["uploadId"][0], body)
        if err is not None:
            return err
    return _orig_key_response_post(self, request, body, bucket_name, query, key_name)


def _check_complete(self, bucket_name, upload_id, body):
    try:
        bucket = self.backend.get_bucket(bucket_name)
    except Exception:
        return None
    multipart = bucket.multiparts.get(upload_id)
    if multipart is None:
        return None
    algo = multipart.metadata.get("x-amz-checksum-algorithm")
    if not algo:
        return None
    algo = algo.upper()
    try:
        parts = minidom.parseString(body).getElementsByTagName("Part")
    except Exception:
        return None
    for p in parts:
        pn = int(p.getElementsByTagName("PartNumber")[0].firstChild.wholeText)
        els = p.getElementsByTagName("Checksum" + algo)
        if not els or els[0].firstChild is None:
            return _error(
                400,
                "InvalidRequest",
                f"The upload was created using a {algo.lower()} checksum. The complete request must include "
                f"the checksum for each part. It was missing for part {pn} in the request.",
            )
        given = els[0].firstChild.wholeText.strip()
        part = multipart.parts.get(pn)
        stored = getattr(part, "_circlebot_checksum", None) if part is not None else None
        if stored is None:
            want = base64.b64encode(_ALGOS.get(algo, _ALGOS["SHA256"])(part.value)).decode() if part is not None else None
        else:
            want = stored[1]
        if given != want:
            return _error(
                400,
                "InvalidPart",
                "One or more of the specified parts could not be found. The part might not have been uploaded, "
                "or the specified entity tag might not have matched the part's entity tag.",
            )
    return None


s3_responses.S3Response._key_response_post = _key_response_post


_orig_put_object = s3_models.S3Backend.put_object


def _put_object(self, bucket_name, key_name, value, *args, **kwargs):
    key = _orig_put_object(self, bucket_name, key_name, value, *args, **kwargs)
    # A multipart object's ETag was made from its parts' (already opaque)
    # ETags; a single PUT encrypted with KMS gets an opaque one here.
    if kwargs.get("etag") is None and (key.encryption or "").startswith("aws:kms"):
        key._etag = _opaque_etag()
    return key


s3_models.S3Backend.put_object = _put_object


if __name__ == "__main__":
    chain = os.environ.get("CIRCLEBOT_CHAIN_LAUNCHER")
    if chain:
        sys.argv = [chain] + sys.argv[1:]
        # run_path leaves sys.path[0] this script's directory: the chained
        # launcher imports its modules (circlebot_volumes) from its own.
        sys.path.insert(0, os.path.dirname(os.path.abspath(chain)))
        runpy.run_path(chain, run_name="__main__")
    else:
        moto_server_module.main(sys.argv[1:])
