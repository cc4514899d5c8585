module reforacle

// The same go line as go-containerregistry v0.21.9's go.mod, so the same net/url defaults apply as in crane.
go 1.25.0

require github.com/google/go-containerregistry v0.21.9

require github.com/opencontainers/go-digest v1.0.0 // indirect
