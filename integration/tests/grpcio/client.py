"""Calls corrald / containerd or corral-cri with grpcio (grpc C-core) as a user would: a plain
`grpc.insecure_channel("unix://...")` with default options, so the channel sends the socket path,
percent-encoded, as :authority. Messages are encoded by hand (a few fields each) to need nothing
but grpcio. Prints one JSON object with what came back.

usage: client.py daemon SOCKET NAMESPACE | client.py cri SOCKET | client.py limits SOCKET NAMESPACE
"""

import hashlib
import json
import sys

import grpc


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def string_field(number, value):
    data = value.encode() if isinstance(value, str) else value
    return varint(number << 3 | 2) + varint(len(data)) + data


def parse(buf):
    """Field number -> list of values (ints for varints, bytes for length-delimited)."""
    fields = {}
    i = 0
    while i < len(buf):
        key, shift = 0, 0
        while True:
            b = buf[i]
            i += 1
            key |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, shift = 0, 0
            while True:
                b = buf[i]
                i += 1
                value |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
        elif wire == 2:
            length, shift = 0, 0
            while True:
                b = buf[i]
                i += 1
                length |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            value = buf[i : i + length]
            i += length
        elif wire == 1:
            value = buf[i : i + 8]
            i += 8
        elif wire == 5:
            value = buf[i : i + 4]
            i += 4
        else:
            raise ValueError(f"wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def first(fields, number, default=b""):
    return fields.get(number, [default])[0]


def raw(b):
    return b


def error_of(call):
    try:
        call()
    except grpc.RpcError as e:
        return {"code": e.code().name, "details": e.details()}
    return {"code": "OK", "details": ""}


def daemon(channel, namespace):
    md = (("containerd-namespace", namespace),)

    def unary(method):
        return channel.unary_unary(method, request_serializer=raw, response_deserializer=raw)

    def stream(method):
        return channel.unary_stream(method, request_serializer=raw, response_deserializer=raw)

    out = {}
    version = parse(unary("/containerd.services.version.v1.Version/Version")(b"", timeout=30))
    out["version"] = first(version, 1).decode()

    # Server streaming: the content store's list, then one blob read back.
    blobs = []
    for reply in stream("/containerd.services.content.v1.Content/List")(
        b"", metadata=md, timeout=30
    ):
        for info in parse(reply).get(1, []):
            info = parse(info)
            blobs.append({"digest": first(info, 1).decode(), "size": first(info, 2, 0)})
    out["blobs"] = blobs
    if blobs:
        blob = max(blobs, key=lambda b: b["size"])
        data = b"".join(
            first(parse(reply), 2)
            for reply in stream("/containerd.services.content.v1.Content/Read")(
                string_field(1, blob["digest"]), metadata=md, timeout=30
            )
        )
        out["read"] = {
            "digest": blob["digest"],
            "size": len(data),
            "sha256": "sha256:" + hashlib.sha256(data).hexdigest(),
        }

    missing = "sha256:" + "0" * 64
    out["missing"] = error_of(
        lambda: unary("/containerd.services.content.v1.Content/Info")(
            string_field(1, missing), metadata=md, timeout=30
        )
    )
    return out


def cri(channel):
    def unary(method):
        return channel.unary_unary(method, request_serializer=raw, response_deserializer=raw)

    out = {}
    version = parse(unary("/runtime.v1.RuntimeService/Version")(string_field(1, "v1"), timeout=30))
    out["version"] = {
        "version": first(version, 1).decode(),
        "runtime_name": first(version, 2).decode(),
        "runtime_version": first(version, 3).decode(),
        "runtime_api_version": first(version, 4).decode(),
    }
    images = parse(unary("/runtime.v1.ImageService/ListImages")(b"", timeout=30))
    out["image_tags"] = sorted(
        tag.decode() for image in images.get(1, []) for tag in parse(image).get(2, [])
    )
    out["missing"] = error_of(
        lambda: unary("/runtime.v1.RuntimeService/ContainerStatus")(
            string_field(1, "no-such-container"), timeout=30
        )
    )
    return out


def limits(channel, namespace):
    """Events.Publish of an event just under and just over the default 16 MiB message limit.
    grpcio has no send limit of its own by default: what answers is the server's."""
    md = (("containerd-namespace", namespace),)
    publish = channel.unary_unary(
        "/containerd.services.events.v1.Events/Publish",
        request_serializer=raw,
        response_deserializer=raw,
    )
    out = {}
    for name, size in (("under", 15 << 20), ("over", 16 << 20)):
        event = string_field(1, "corral.test/Blob") + string_field(2, b"\0" * size)
        request = string_field(1, "/corral-test/limits") + string_field(2, event)
        result = error_of(lambda: publish(request, metadata=md, timeout=60))
        result["size"] = len(request)
        out[name] = result
    return out


def main():
    mode, socket = sys.argv[1], sys.argv[2]
    with grpc.insecure_channel("unix://" + socket) as channel:
        if mode == "daemon":
            result = daemon(channel, sys.argv[3])
        elif mode == "limits":
            result = limits(channel, sys.argv[3])
        else:
            result = cri(channel)
    result["grpcio"] = grpc.__version__
    print(json.dumps(result))


if __name__ == "__main__":
    main()
