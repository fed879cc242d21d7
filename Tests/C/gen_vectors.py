"""Writes the C form of Tests/Vectors/frames.json (a header the C tests include)."""
import json, sys

vectors = json.load(open(sys.argv[1]))
out = ["/* Generated from Tests/Vectors/frames.json by Tests/C/gen_vectors.py. */",
       "struct valid_vector { const char *name; uint16_t type; uint32_t sequence; const char *payload;",
       "                      const char *reserved; uint32_t checksum; const char *frame; };",
       "struct invalid_vector { const char *name; const char *frame; int error; };",
       "static const struct valid_vector VALID_VECTORS[] = {"]
for v in vectors["valid"]:
    out.append('    {"%s", %d, %uu, "%s", "%s", %uu, "%s"},' % (
        v["name"], v["type"], v["sequence"], v["payload"], v["reserved"], v["checksum"], v["frame"]))
out.append("};")
out.append("static const struct invalid_vector INVALID_VECTORS[] = {")
for v in vectors["invalid"]:
    out.append('    {"%s", "%s", %s},' % (v["name"], v["frame"], v["error"]))
out.append("};")
open(sys.argv[2], "w").write("\n".join(out) + "\n")
