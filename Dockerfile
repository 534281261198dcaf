# One image for all of jobrun's roles: `jobrun manager` (controllers and the
# REST API), `jobrun runner` in job pods, `jobrun apikey`, `jobrun token`.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY api/ api/
COPY apiserver/ apiserver/
COPY cmd/ cmd/
COPY controllers/ controllers/
COPY handlers/ handlers/
COPY internal/ internal/
COPY sdk/ sdk/
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/jobrun ./cmd/jobrun

# The same contents as `make image` (internal/image), which builds without
# Docker: the static binary and the CA certificates for jobrun's TLS calls
# (SMTP, JWKS, RevenueCat) on scratch, a numeric non-root user, no shell.
# Time zones are in the binary (time/tzdata). hack/check-dockerfile.sh keeps
# this file and internal/image in step.
FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/jobrun /jobrun
USER 65532:65532
WORKDIR /
ENTRYPOINT ["/jobrun"]
CMD ["manager"]
