// Package paramschema checks a run's params against its JobType's
// paramsSchema. The schema is an OpenAPI v3 schema, the dialect of CRD
// schemas, and is checked by the same validator the API server uses for
// custom resources, so messages read like kubectl's.
package paramschema

import (
	"encoding/json"
	"errors"
	"fmt"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// ErrInvalidSchema wraps errors in the schema itself (the JobType's fault,
// not the run's).
var ErrInvalidSchema = errors.New("invalid paramsSchema")

// Validate checks params (a JSON object, or nil for none) against schema
// (nil: anything goes). The error names each offending field under
// "params".
func Validate(schema, params *runtime.RawExtension) error {
	if schema == nil || len(schema.Raw) == 0 {
		return nil
	}
	v1 := &apiextensionsv1.JSONSchemaProps{}
	if err := json.Unmarshal(schema.Raw, v1); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidSchema, err)
	}
	internal := &apiextensions.JSONSchemaProps{}
	if err := apiextensionsv1.Convert_v1_JSONSchemaProps_To_apiextensions_JSONSchemaProps(v1, internal, nil); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidSchema, err)
	}
	validator, _, err := validation.NewSchemaValidator(internal)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidSchema, err)
	}
	var value any = map[string]any{}
	if params != nil && len(params.Raw) > 0 {
		if err := json.Unmarshal(params.Raw, &value); err != nil {
			return fmt.Errorf("params are not JSON: %v", err)
		}
	}
	if errs := validation.ValidateCustomResource(field.NewPath("params"), value, validator); len(errs) > 0 {
		return errs.ToAggregate()
	}
	return nil
}
