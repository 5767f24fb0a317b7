//! `#[derive(Equivalence)]` for Braid: implements `braid::datatype::Equivalence` for a struct
//! whose fields all implement it, describing its layout as an MPI struct datatype
//! (`MPI_Type_create_struct`) with the field offsets the compiler chose.
//!
//! # What it does not do
//! It does not check for padding bytes: the generated `unsafe impl` relies on a compile-time
//! assertion that the struct's size equals the sum of its fields' sizes (no padding), and on
//! each field being `Equivalence` (every bit pattern valid). Enums and unions are rejected.
//!
//! # Glossary
//! - **typemap**: the datatype's sequence of (byte displacement, primitive type) pairs.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use proc_macro::TokenStream;
use quote::quote;
use syn::{Data, DeriveInput, Fields, parse_macro_input};

/// Derives `braid::datatype::Equivalence` for a struct of `Equivalence` fields without
/// padding.
///
/// # Panics
/// At compile time, for enums, unions, and structs with padding.
#[proc_macro_derive(Equivalence)]
pub fn derive_equivalence(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    let name = &input.ident;
    let (impl_g, ty_g, where_g) = input.generics.split_for_impl();
    let Data::Struct(data) = &input.data else {
        return syn::Error::new_spanned(name, "Equivalence can only be derived for structs")
            .to_compile_error()
            .into();
    };
    let (members, types): (Vec<proc_macro2::TokenStream>, Vec<&syn::Type>) = match &data.fields {
        Fields::Named(f) => f
            .named
            .iter()
            .map(|f| {
                let id = f.ident.as_ref().map(|i| quote!(#i)).unwrap_or_default();
                (id, &f.ty)
            })
            .unzip(),
        Fields::Unnamed(f) => f
            .unnamed
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let idx = syn::Index::from(i);
                (quote!(#idx), &f.ty)
            })
            .unzip(),
        Fields::Unit => (Vec::new(), Vec::new()),
    };
    let expanded = quote! {
        const _: () = {
            assert!(
                ::core::mem::size_of::<#name #ty_g>() == 0 #( + ::core::mem::size_of::<#types>() )*,
                "Equivalence cannot be derived for a struct with padding"
            );
        };
        // SAFETY: every field is Equivalence (plain old data, every bit pattern valid) and the
        // assertion above proves there is no padding.
        unsafe impl #impl_g ::braid::datatype::Equivalence for #name #ty_g #where_g {
            fn equivalent_datatype() -> ::braid::datatype::Datatype {
                let mut t = ::braid::datatype::Datatype::structure(
                    &[#( { let _ = ::core::marker::PhantomData::<#types>; 1usize } ),*],
                    &[#( ::core::mem::offset_of!(#name #ty_g, #members) as isize ),*],
                    &[#( &<#types as ::braid::datatype::Equivalence>::equivalent_datatype() ),*],
                )
                .unwrap_or_else(|_| ::braid::datatype::Datatype::opaque(::core::mem::size_of::<Self>()));
                t = ::braid::datatype::Datatype::resized(&t, 0, ::core::mem::size_of::<Self>() as isize);
                t.commit();
                t
            }
        }
    };
    expanded.into()
}
