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

# A static binary on distroless: no shell, no package manager, non-root.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/jobrun /jobrun
USER 65532:65532
ENTRYPOINT ["/jobrun"]
CMD ["manager"]
