// reforacle parses image references with go-containerregistry's pkg/name, the parser crane itself uses, for the
// differential test in tests/test_reference_fuzz.py. Input: one hex-encoded reference per line (any bytes, even
// newlines). Output: one JSON object per line, {"error": ...} or the parsed parts and the registry's scheme ("http":
// crane tries https, then http).
package main

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"os"

	"github.com/google/go-containerregistry/pkg/name"
)

type result struct {
	Error      string `json:"error,omitempty"`
	Registry   string `json:"registry,omitempty"`
	Repository string `json:"repository,omitempty"`
	Identifier string `json:"identifier,omitempty"`
	Name       string `json:"name,omitempty"`
	Scheme     string `json:"scheme,omitempty"`
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<24)
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	encode := json.NewEncoder(out)
	for in.Scan() {
		raw, err := hex.DecodeString(in.Text())
		if err != nil {
			panic(err)
		}
		var r result
		if ref, err := name.ParseReference(string(raw)); err != nil {
			r.Error = err.Error()
		} else {
			r = result{Registry: ref.Context().RegistryStr(), Repository: ref.Context().RepositoryStr(),
				Identifier: ref.Identifier(), Name: ref.Name(), Scheme: ref.Context().Scheme()}
		}
		if err := encode.Encode(r); err != nil {
			panic(err)
		}
		if err := out.Flush(); err != nil { // the test waits for each answer
			panic(err)
		}
	}
	if err := in.Err(); err != nil {
		panic(err)
	}
}
